//! How deep a YAML text nests, in one linear pass, without parsing it.
//!
//! What is counted: every collection that is open at a point of the text, following the token
//! rules of libyaml's scanner (the scanner serde_yaml_ng runs), so that brackets inside quoted
//! scalars, plain scalars, comments and block scalars are not nesting, and brackets outside them
//! are:
//!
//! - a flow collection per `[` or `{` not yet closed;
//! - a block collection per indentation level opened by `- `, `? ` or a `key:`, closed when a
//!   line starts left of it (libyaml's indent stack);
//! - one more where the parser opens a collection the scanner has no token for: a `- ` at the
//!   column of the mapping it is a value of (an indentless sequence, counted until the mapping
//!   closes or takes its next key) and `key: value` inside a flow sequence (a single-pair
//!   mapping, until the next `,` or the end of the sequence).
//!
//! It never counts less than serde_yaml_ng nests (the tests check it against libyaml's own
//! tokens on generated texts); where it is unsure it counts more. After a point where libyaml
//! would stop with a syntax error it goes on counting: that costs nothing, since the parser
//! never gets further.

/// Where the nesting first went over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Over {
    /// The depth reached: the limit + 1.
    pub depth: usize,
    /// 1-based line.
    pub line: usize,
}

/// The first point where `text` nests deeper than `limit`, if any.
pub fn first_over(text: &str, limit: usize) -> Option<Over> {
    Scanner::new(text.as_bytes(), limit).run()
}

/// The deepest nesting of `text` (for tests and tools; stops counting past `usize::MAX`).
#[cfg(test)]
pub fn max_depth(text: &str) -> usize {
    let mut s = Scanner::new(text.as_bytes(), usize::MAX);
    s.run();
    s.max
}

/// A block collection: libyaml's indent stack entry.
struct Block {
    column: i64,
    mapping: bool,
    /// A `- ` sequence at this mapping's own column is open (the parser's indentless sequence).
    indentless: bool,
}

/// A flow collection.
struct Flow {
    sequence: bool,
    /// A `key: value` entry of this sequence is open (the parser's single-pair mapping).
    pair: bool,
    /// The deepest point since it opened.
    peak: usize,
}

/// Where a simple key (a `key` that a `:` on the same line may follow) started.
#[derive(Clone, Copy)]
struct Key {
    column: i64,
    line: usize,
    index: usize,
    /// The deepest point since it started: the `:` opens a mapping around the key, one level
    /// above all of it (libyaml inserts that token before the key, after the fact).
    peak: usize,
}

/// U+FEFF in UTF-8.
const BOM: &[u8] = "\u{feff}".as_bytes();

/// libyaml never looks further than this for the `:` of a simple key.
const MAX_SIMPLE_KEY: usize = 1024;

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    line: usize,
    /// Characters (not bytes) since the start of the line, as libyaml counts columns.
    column: i64,
    blocks: Vec<Block>,
    flows: Vec<Flow>,
    /// The possible simple key per level: `[0]` is the block context, `[n]` flow level `n`.
    keys: Vec<Option<Key>>,
    simple_key_allowed: bool,
    depth: usize,
    max: usize,
    limit: usize,
    over: Option<Over>,
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8], limit: usize) -> Self {
        Self {
            b,
            i: 0,
            line: 0,
            column: 0,
            blocks: Vec::new(),
            flows: Vec::new(),
            keys: vec![None],
            simple_key_allowed: true,
            depth: 0,
            max: 0,
            limit,
            over: None,
        }
    }

    // --- characters ---

    fn at(&self, k: usize) -> u8 {
        self.b.get(self.i + k).copied().unwrap_or(0)
    }

    /// The end: the text's end, or a NUL (libyaml's reader stops there with an error).
    fn at_end(&self) -> bool {
        self.at(0) == 0
    }

    /// Byte length of the line break at `i + k`, 0 if none: `\r\n`, `\r`, `\n`, NEL, LS, PS.
    fn break_len(&self, k: usize) -> usize {
        match (self.at(k), self.at(k + 1), self.at(k + 2)) {
            (b'\r', b'\n', _) => 2,
            (b'\r' | b'\n', _, _) => 1,
            (0xC2, 0x85, _) => 2,
            (0xE2, 0x80, 0xA8 | 0xA9) => 3,
            _ => 0,
        }
    }

    fn is_break(&self, k: usize) -> bool {
        self.break_len(k) > 0
    }

    fn is_blank(&self, k: usize) -> bool {
        matches!(self.at(k), b' ' | b'\t')
    }

    fn is_blankz(&self, k: usize) -> bool {
        self.at(k) == 0 || self.is_blank(k) || self.is_break(k)
    }

    fn is_alpha(&self, k: usize) -> bool {
        let c = self.at(k);
        c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
    }

    /// Step over one character (not a line break).
    fn skip(&mut self) {
        let c = self.at(0);
        let len = match c {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        self.i = (self.i + len).min(self.b.len());
        self.column += 1;
    }

    /// Step over a line break.
    fn skip_line(&mut self) {
        self.i += self.break_len(0);
        self.line += 1;
        self.column = 0;
    }

    /// Step over a character or a line break.
    fn skip_any(&mut self) {
        if self.is_break(0) {
            self.skip_line()
        } else {
            self.skip()
        }
    }

    fn skip_to_break(&mut self) {
        while !self.at_end() && !self.is_break(0) {
            self.skip();
        }
    }

    /// `---` or `...` at column 0, followed by a blank or the end.
    fn at_document_marker(&self) -> bool {
        self.column == 0
            && ((self.at(0) == b'-' && self.at(1) == b'-' && self.at(2) == b'-')
                || (self.at(0) == b'.' && self.at(1) == b'.' && self.at(2) == b'.'))
            && self.is_blankz(3)
    }

    // --- nesting ---

    fn indent(&self) -> i64 {
        self.blocks.last().map_or(-1, |b| b.column)
    }

    fn count(&mut self, delta: isize) {
        self.depth = self.depth.saturating_add_signed(delta);
        if delta > 0 {
            self.note(self.depth);
        }
    }

    /// The text reached depth `d` here (or, for a key, around here): the maximum, the limit,
    /// and the peaks of the innermost flow collection and of a pending key.
    fn note(&mut self, d: usize) {
        self.max = self.max.max(d);
        if d > self.limit && self.over.is_none() {
            self.over = Some(Over {
                depth: d,
                line: self.line + 1,
            });
        }
        if let Some(flow) = self.flows.last_mut() {
            flow.peak = flow.peak.max(d);
        }
        if let Some(Some(key)) = self.keys.last_mut() {
            key.peak = key.peak.max(d);
        }
    }

    /// libyaml's `roll_indent`: a block collection opens at `column` if it is right of the
    /// current one. True if it did.
    fn roll(&mut self, column: i64, mapping: bool) -> bool {
        let opens = self.flows.is_empty() && self.indent() < column;
        if opens {
            self.blocks.push(Block {
                column,
                mapping,
                indentless: false,
            });
            self.count(1);
        }
        opens
    }

    /// libyaml's `unroll_indent`: block collections right of `column` close.
    fn unroll(&mut self, column: i64) {
        if !self.flows.is_empty() {
            return;
        }
        while self.indent() > column {
            let block = self.blocks.pop().expect("indent() > -1");
            self.count(-1 - isize::from(block.indentless));
        }
    }

    /// A `:` or `?` inside a flow sequence opens a single-pair mapping. True if it did.
    fn pair(&mut self) -> bool {
        match self.flows.last_mut() {
            Some(flow) if flow.sequence && !flow.pair => {
                flow.pair = true;
                self.count(1);
                true
            }
            _ => false,
        }
    }

    /// A key at a block mapping's own column is its next key: an indentless sequence before it
    /// has ended.
    fn next_key_at(&mut self, column: i64) {
        if let Some(block) = self.blocks.last_mut() {
            if block.column == column && block.mapping && block.indentless {
                block.indentless = false;
                self.count(-1);
            }
        }
    }

    fn save_key(&mut self) {
        if self.simple_key_allowed {
            let key = Key {
                column: self.column,
                line: self.line,
                index: self.i,
                peak: self.depth,
            };
            *self.keys.last_mut().expect("keys[0]") = Some(key);
        }
    }

    fn remove_key(&mut self) {
        *self.keys.last_mut().expect("keys[0]") = None;
    }

    /// The current level's simple key, if a `:` here can still complete it (same line, within
    /// 1024 bytes: libyaml's staleness rule, which only ever turns a key stale).
    fn take_key(&mut self) -> Option<Key> {
        let key = self.keys.last_mut().expect("keys[0]").take()?;
        (key.line == self.line && key.index + MAX_SIMPLE_KEY >= self.i).then_some(key)
    }

    // --- tokens ---

    fn run(&mut self) -> Option<Over> {
        loop {
            self.skip_to_next_token();
            if self.flows.is_empty() {
                self.unroll(self.column);
            }
            if self.over.is_some() || self.at_end() {
                return self.over;
            }
            self.token();
            if self.over.is_some() {
                return self.over;
            }
        }
    }

    /// libyaml's `scan_to_next_token`: blanks, comments and line breaks.
    fn skip_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.b[self.i..].starts_with(BOM) {
                self.skip();
            }
            while self.at(0) == b' '
                || (self.at(0) == b'\t' && (!self.flows.is_empty() || !self.simple_key_allowed))
            {
                self.skip();
            }
            if self.at(0) == b'#' {
                self.skip_to_break();
            }
            if !self.is_break(0) {
                return;
            }
            self.skip_line();
            if self.flows.is_empty() {
                self.simple_key_allowed = true;
            }
        }
    }

    /// One token at a token start (libyaml's `fetch_next_token`).
    fn token(&mut self) {
        let c = self.at(0);
        let in_flow = !self.flows.is_empty();
        if self.column == 0 && c == b'%' {
            // A directive: the rest of the line.
            self.skip_to_break();
            return;
        }
        if self.at_document_marker() {
            self.unroll(-1);
            self.remove_key();
            self.simple_key_allowed = false;
            for _ in 0..3 {
                self.skip();
            }
            return;
        }
        match c {
            b'[' | b'{' => {
                self.save_key();
                self.flows.push(Flow {
                    sequence: c == b'[',
                    pair: false,
                    peak: self.depth,
                });
                self.keys.push(None);
                self.count(1);
                self.simple_key_allowed = true;
                self.skip();
            }
            b']' | b'}' => {
                self.remove_key();
                if let Some(flow) = self.flows.pop() {
                    self.keys.pop();
                    self.count(-1 - isize::from(flow.pair));
                    // Whatever is around it (a key pending, the enclosing collection) went as
                    // deep as it did.
                    if let Some(outer) = self.flows.last_mut() {
                        outer.peak = outer.peak.max(flow.peak);
                    }
                    if let Some(Some(key)) = self.keys.last_mut() {
                        key.peak = key.peak.max(flow.peak);
                    }
                }
                self.simple_key_allowed = false;
                self.skip();
            }
            b',' => {
                self.remove_key();
                if let Some(flow) = self.flows.last_mut() {
                    if std::mem::take(&mut flow.pair) {
                        self.count(-1);
                    }
                }
                self.simple_key_allowed = true;
                self.skip();
            }
            b'-' if self.is_blankz(1) => {
                if !in_flow {
                    let column = self.column;
                    match self.blocks.last_mut() {
                        Some(b) if b.column == column && b.mapping && !b.indentless => {
                            b.indentless = true;
                            self.count(1);
                        }
                        _ => {
                            self.roll(column, false);
                        }
                    }
                }
                self.remove_key();
                self.simple_key_allowed = true;
                self.skip();
            }
            b'?' if in_flow || self.is_blankz(1) => {
                if in_flow {
                    self.pair();
                } else {
                    self.next_key_at(self.column);
                    self.roll(self.column, true);
                }
                self.remove_key();
                self.simple_key_allowed = !in_flow;
                self.skip();
            }
            b':' if in_flow || self.is_blankz(1) => {
                let key = self.take_key();
                self.simple_key_allowed = key.is_none() && !in_flow;
                let column = key.map_or(self.column, |k| k.column);
                let opened = if in_flow {
                    self.pair()
                } else {
                    self.next_key_at(column);
                    self.roll(column, true)
                };
                if let (true, Some(key)) = (opened, key) {
                    // The mapping opened here holds the key: one level above its deepest point.
                    self.note(key.peak + 1);
                }
                self.skip();
            }
            b'*' | b'&' => {
                self.save_key();
                self.simple_key_allowed = false;
                self.skip();
                while self.is_alpha(0) {
                    self.skip();
                }
            }
            b'!' => {
                self.save_key();
                self.simple_key_allowed = false;
                self.tag();
            }
            b'|' | b'>' if !in_flow => {
                self.remove_key();
                self.simple_key_allowed = true;
                self.block_scalar();
            }
            b'\'' | b'"' => {
                self.save_key();
                self.simple_key_allowed = false;
                self.quoted(c);
            }
            _ if self.plain_starts_here() => {
                self.save_key();
                self.simple_key_allowed = false;
                self.plain();
            }
            // libyaml stops here ("cannot start any token"): whatever follows is never parsed.
            _ => self.skip(),
        }
    }

    fn plain_starts_here(&self) -> bool {
        let c = self.at(0);
        let indicator = self.is_blankz(0) || b"-?:,[]{}#&*!|>'\"%@`".contains(&c);
        !indicator
            || (c == b'-' && !self.is_blank(1))
            || (self.flows.is_empty() && (c == b'?' || c == b':') && !self.is_blankz(1))
    }

    /// A tag: `!<verbatim>`, or `!handle!suffix` / `!suffix` of URI characters.
    fn tag(&mut self) {
        self.skip();
        let verbatim = self.at(0) == b'<';
        if verbatim {
            self.skip();
        } else {
            while self.is_alpha(0) {
                self.skip();
            }
            if self.at(0) == b'!' {
                self.skip();
            }
        }
        while self.is_alpha(0)
            || b";/?:@&=+$.%!~*'()".contains(&self.at(0))
            || (verbatim && matches!(self.at(0), b',' | b'[' | b']'))
        {
            self.skip();
        }
        if verbatim && self.at(0) == b'>' {
            self.skip();
        }
    }

    /// A single- or double-quoted scalar, over as many lines as it takes.
    fn quoted(&mut self, quote: u8) {
        self.skip();
        loop {
            if self.at_end() || self.at_document_marker() {
                return;
            }
            let c = self.at(0);
            if quote == b'\'' && c == b'\'' && self.at(1) == b'\'' {
                self.skip();
                self.skip();
            } else if c == quote {
                self.skip();
                return;
            } else if quote == b'"' && c == b'\\' {
                self.skip();
                if !self.at_end() {
                    self.skip_any();
                }
            } else {
                self.skip_any();
            }
        }
    }

    /// A plain scalar, with its continuation lines (libyaml's `scan_plain_scalar`).
    fn plain(&mut self) {
        let indent = self.indent() + 1;
        let in_flow = !self.flows.is_empty();
        let mut leading_blanks = false;
        loop {
            if self.at_document_marker() || self.at(0) == b'#' {
                break;
            }
            while !self.is_blankz(0) {
                let c = self.at(0);
                if in_flow && c == b':' && b",?[]{}".contains(&self.at(1)) && self.at(1) != 0 {
                    // libyaml: "found unexpected ':'"; nothing after is parsed.
                    return;
                }
                if (c == b':' && self.is_blankz(1))
                    || (in_flow && matches!(c, b',' | b'[' | b']' | b'{' | b'}'))
                {
                    break;
                }
                leading_blanks = false;
                self.skip();
            }
            if !(self.is_blank(0) || self.is_break(0)) {
                break;
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_blank(0) {
                    if leading_blanks && self.column < indent && self.at(0) == b'\t' {
                        // libyaml: "found a tab character that violates indentation".
                        return;
                    }
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if !in_flow && self.column < indent {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
    }

    /// A literal or folded block scalar: its header, then every line indented at least as far
    /// as its content (libyaml's `scan_block_scalar`).
    fn block_scalar(&mut self) {
        self.skip();
        let mut increment = 0;
        let digit = |c: u8| (b'1'..=b'9').contains(&c).then(|| i64::from(c - b'0'));
        if matches!(self.at(0), b'+' | b'-') {
            self.skip();
            if let Some(d) = digit(self.at(0)) {
                increment = d;
                self.skip();
            } else if self.at(0) == b'0' {
                return;
            }
        } else if let Some(d) = digit(self.at(0)) {
            increment = d;
            self.skip();
            if matches!(self.at(0), b'+' | b'-') {
                self.skip();
            }
        } else if self.at(0) == b'0' {
            return;
        }
        while self.is_blank(0) {
            self.skip();
        }
        if self.at(0) == b'#' {
            self.skip_to_break();
        }
        if !self.is_blankz(0) {
            // libyaml: "did not find expected comment or line break".
            return;
        }
        if self.is_break(0) {
            self.skip_line();
        }
        let parent = self.indent();
        let mut indent = match increment {
            0 => 0,
            n if parent >= 0 => parent + n,
            n => n,
        };
        if !self.block_breaks(&mut indent, parent) {
            return;
        }
        while self.column == indent && !self.at_end() {
            self.skip_to_break();
            if self.at_end() {
                return;
            }
            self.skip_line();
            if !self.block_breaks(&mut indent, parent) {
                return;
            }
        }
    }

    /// Empty lines and indentation inside a block scalar; settles its indentation on the first
    /// line with content. False where libyaml stops (a tab in the indentation).
    fn block_breaks(&mut self, indent: &mut i64, parent: i64) -> bool {
        let mut max_indent = 0;
        loop {
            while (*indent == 0 || self.column < *indent) && self.at(0) == b' ' {
                self.skip();
            }
            max_indent = max_indent.max(self.column);
            if (*indent == 0 || self.column < *indent) && self.at(0) == b'\t' {
                return false;
            }
            if !self.is_break(0) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(parent + 1).max(1);
        }
        true
    }
}
