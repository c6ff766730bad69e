use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::depth::max_depth;
use super::*;

/// The deepest nesting libyaml's scanner reaches on `text` before it ends or fails: block
/// collections (its indent stack) plus flow collections (its flow level), from its own tokens.
fn libyaml_depth(text: &str) -> usize {
    use unsafe_libyaml::*;
    let mut max = 0usize;
    // SAFETY: the parser is initialised before use and deleted after; every token it returns
    // is deleted; the input outlives the parser.
    unsafe {
        let mut parser = MaybeUninit::<yaml_parser_t>::uninit();
        assert!(yaml_parser_initialize(parser.as_mut_ptr()).ok);
        let parser = parser.as_mut_ptr();
        // As serde_yaml_ng sets it up: UTF-8 said, so a leading byte order mark reaches the
        // scanner (which skips it, one column) instead of being dropped by the reader.
        yaml_parser_set_encoding(parser, YAML_UTF8_ENCODING);
        yaml_parser_set_input_string(parser, text.as_ptr(), text.len() as _);
        let (mut block, mut flow) = (0usize, 0usize);
        loop {
            let mut token = MaybeUninit::<yaml_token_t>::uninit();
            if !yaml_parser_scan(parser, token.as_mut_ptr()).ok {
                break;
            }
            let mut token = token.assume_init();
            let kind = token.type_;
            yaml_token_delete(&mut token);
            match kind {
                YAML_BLOCK_SEQUENCE_START_TOKEN | YAML_BLOCK_MAPPING_START_TOKEN => block += 1,
                YAML_BLOCK_END_TOKEN => block = block.saturating_sub(1),
                YAML_FLOW_SEQUENCE_START_TOKEN | YAML_FLOW_MAPPING_START_TOKEN => flow += 1,
                YAML_FLOW_SEQUENCE_END_TOKEN | YAML_FLOW_MAPPING_END_TOKEN => {
                    flow = flow.saturating_sub(1)
                }
                YAML_STREAM_END_TOKEN | YAML_NO_TOKEN => break,
                _ => {}
            }
            max = max.max(block + flow);
        }
        yaml_parser_delete(parser);
    }
    max
}

/// How deep the value serde_yaml_ng builds nests (collections; a tag is not a level).
fn value_depth(v: &serde_yaml_ng::Value) -> usize {
    use serde_yaml_ng::Value;
    match v {
        Value::Sequence(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        Value::Mapping(map) => {
            1 + map
                .iter()
                .map(|(k, v)| value_depth(k).max(value_depth(v)))
                .max()
                .unwrap_or(0)
        }
        Value::Tagged(t) => value_depth(&t.value),
        _ => 0,
    }
}

/// Pieces YAML is made of, the awkward ones included: every kind of quote, comment, block
/// scalar header, indicator, tag, line break (NEL, LS, PS, CR too) and indentation.
const PIECES: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    ": ",
    "?",
    "? ",
    "-",
    "- ",
    " ",
    "  ",
    "    ",
    "\n",
    "\n  ",
    "\r\n",
    "\r",
    "\u{85}",
    "\u{2028}",
    "\u{2029}",
    "\t",
    "#",
    " #",
    "'",
    "''",
    "\"",
    "\\",
    "\\\"",
    "|",
    "|2",
    ">-",
    "|+\n",
    "!",
    "!t ",
    "!<a,[b]> ",
    "!!str ",
    "&a ",
    "*a",
    "%",
    "@",
    "`",
    "---",
    "---\n",
    "...",
    "a",
    "b",
    "k: ",
    "x y",
    "1",
    "\u{feff}",
    "é",
];

/// A soup of pieces, or indented lines of them.
fn text() -> impl Strategy<Value = String> {
    let soup = prop::collection::vec(prop::sample::select(PIECES), 0..48).prop_map(|p| p.concat());
    let line = (
        0usize..7,
        prop::collection::vec(prop::sample::select(PIECES), 0..10),
    )
        .prop_map(|(indent, p)| format!("{}{}\n", " ".repeat(indent), p.concat()));
    let lines = prop::collection::vec(line, 0..14).prop_map(|l| l.concat());
    prop_oneof![soup, lines]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// Never less than libyaml nests, nor than the value serde_yaml_ng builds (aliases aside:
    /// their expansion is serde_yaml_ng's own limit).
    #[test]
    fn the_scan_never_counts_less_than_libyaml(text in text()) {
        let ours = max_depth(&text);
        let theirs = libyaml_depth(&text);
        prop_assert!(ours >= theirs, "{text:?}: scanned {ours}, libyaml {theirs}");
        if !text.contains('*') {
            if let Ok(value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) {
                let built = value_depth(&value);
                prop_assert!(ours >= built, "{text:?}: scanned {ours}, value {built}");
            }
        }
    }
}

proptest! {
    /// Any text at all, any bytes made text: an answer, never a panic.
    #[test]
    fn the_scan_never_panics(text in any::<String>(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = check(&text);
        let _ = check(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn counts_what_nests_and_nothing_else() {
    let cases: &[(&str, usize)] = &[
        ("", 0),
        ("a", 0),
        ("a: b", 1),
        ("{a: [b, {c: d}]}", 3),
        ("a:\n  b:\n    c: [d]\n", 4),
        // An indentless sequence is a level of its own.
        ("a:\n- b\n- c\n", 2),
        ("a:\n- b:\n  - c\n", 4),
        // A key: value inside a flow sequence is a mapping.
        ("[a: [b: c]]", 4),
        ("- - - x", 3),
        // Brackets that are text: quoted, plain, commented, in a block scalar, in a tag.
        ("a: \"[[[[\"", 1),
        ("a: '[[[[ '' [[['", 1),
        ("a: b [[[[", 1),
        ("a: it's [[[[", 1),
        ("# [[[[\na: b", 1),
        ("a: |\n  [[[[\n  {{{{\nb: c", 1),
        ("a: >-\n    [[[[\n\n    [[[[\n", 1),
        ("a: !<x[[[[> b", 1),
        ("a: b\n  [[[[ c\n", 1),
        // A key's mapping is one level above the key, however deep the key goes.
        ("[-]:", 2),
        ("[[a]: b]: c", 4),
        ("\u{feff}\u{feff}#:", 1),
    ];
    for (text, depth) in cases {
        assert_eq!(max_depth(text), *depth, "{text:?}");
    }
}

#[test]
fn nesting_hidden_behind_text_that_looks_like_a_quote_is_found() {
    let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
    for text in [
        // A plain scalar with a quote in it, then real nesting and a closing quote in a comment.
        format!("a: x ['\nb: {deep} # '"),
        // A block scalar's text with a quote, then real nesting.
        format!("a: |\n  \"\nb: {deep} # \""),
        // A comment that ends at a Unicode line separator.
        format!("a: b # '\u{2028}c: {deep} # '"),
        // Fake closers inside a real string do not close anything.
        format!("{}\"{}\"{}", "[".repeat(40), "]".repeat(40), "[".repeat(40)),
    ] {
        assert!(
            matches!(check(&text), Err(LimitError::TooDeep { .. })),
            "{text:?}: {}",
            max_depth(&text)
        );
    }
}

#[test]
fn deep_documents_are_refused_with_the_depth_and_the_line() {
    let flow = format!("version: v1\nflags:\n  x: {}", "[".repeat(200_000));
    let started = Instant::now();
    let error = check(&flow).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        error.to_string(),
        "nested 65 levels deep at line 3; the limit is 64"
    );
    let mut block = String::new();
    for level in 0..65 {
        block.push_str(&format!("{}k{level}:\n", "  ".repeat(level)));
    }
    assert_eq!(
        check(&block).unwrap_err(),
        LimitError::TooDeep {
            depth: 65,
            line: 65
        }
    );
    assert_eq!(
        check(&"- ".repeat(65)).unwrap_err(),
        LimitError::TooDeep { depth: 65, line: 1 }
    );
    // 64 is allowed.
    let at_limit = format!("{}{}", "[".repeat(64), "]".repeat(64));
    assert_eq!(check(&at_limit), Ok(()));
}

#[test]
fn large_documents_are_refused_with_the_size() {
    let text = format!("# {}\n", "x".repeat(300 * 1024 - 3));
    assert_eq!(
        check(&text).unwrap_err().to_string(),
        "the file is 300 KiB; the limit is 256 KiB"
    );
    assert_eq!(check(&"#\n".repeat(MAX_BYTES / 2)), Ok(()));
}

#[test]
fn the_scan_is_linear() {
    // The worst shape at the limits: 64-deep `{a: ` siblings filling 256 KiB.
    let unit = format!("{}x{}, ", "{a: ".repeat(63), "}".repeat(63));
    let text = format!("[{}]", unit.repeat((MAX_BYTES - 2) / unit.len()));
    let started = Instant::now();
    assert_eq!(check(&text), Ok(()));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn the_repositorys_own_documents_are_far_from_the_limits() {
    let dirs = ["fixtures", "examples", "tests/data", "daemonset"];
    let mut seen = 0;
    let mut stack: Vec<std::path::PathBuf> = dirs
        .iter()
        .map(|d| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(d))
        .collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(check(&text), Ok(()), "{}", path.display());
            assert!(max_depth(&text) <= 16, "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen > 5, "only {seen} documents found");
}
