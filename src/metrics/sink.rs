//! Where the families' series go: the text template a scrape serves ([`Template`]), refreshed in
//! place while the series set stays the same, or protobuf families for the
//! [`prometheus::core::Collector`] path ([`ProtoBuilder`]).
//!
//! The walk over the series (`super::families::emit`) is the same for all of them, so building
//! and refreshing can never disagree about which value belongs to which series.

use std::cell::OnceCell;
use std::sync::Arc;

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use super::names::{Format, Kind, MetricDef};

/// Receives the series of every family in order.
pub trait Sink {
    /// The next family starts.
    fn family(&mut self, def: &'static MetricDef);
    /// A series of the current family; `id` identifies it within the family for a given
    /// snapshot and attribution (so that a refresh can tell the series set changed). Labels are a
    /// closure so that a refresh builds none.
    fn series<'s>(&mut self, id: u64, labels: impl FnOnce(&mut Labels<'_, 's>), value: f64);
}

/// Labels rendered once and reused by many series (a device's labels). A series whose labels
/// are exactly one set shares its text with every other such series of the template.
#[derive(Debug, Clone, Default)]
pub struct LabelSet {
    pairs: Vec<(&'static str, String)>,
    /// `a="x",b="y"`, escaped.
    text: String,
    shared: OnceCell<Arc<str>>,
}

impl LabelSet {
    pub fn push(&mut self, name: &'static str, value: &str) {
        if !self.text.is_empty() {
            self.text.push(',');
        }
        write_label(&mut self.text, name, value);
        self.pairs.push((name, value.to_string()));
        self.shared = OnceCell::new();
    }

    fn shared(&self) -> Arc<str> {
        self.shared
            .get_or_init(|| Arc::from(self.text.as_str()))
            .clone()
    }
}

/// The labels of one series, as they are written (into `'o`, from sets that live for `'s`).
pub struct Labels<'o, 's>(Out<'o, 's>);

enum Out<'o, 's> {
    Text(TextLabels<'o, 's>),
    Pairs(&'o mut Vec<LabelPair>),
}

/// A series' labels on their way into a family's prefix buffer: a lone [`LabelSet`] is kept
/// shared; anything else is written as `name{…`.
struct TextLabels<'o, 's> {
    out: &'o mut String,
    name: &'static str,
    /// `name{` is in `out`.
    started: bool,
    /// The one set given so far, not yet written.
    pending: Option<&'s LabelSet>,
}

impl TextLabels<'_, '_> {
    /// Make `out` end in `name{…` with everything given so far.
    fn materialize(&mut self) {
        if !self.started {
            self.out.push_str(self.name);
            self.out.push('{');
            self.started = true;
        }
        if let Some(set) = self.pending.take() {
            self.out.push_str(&set.text);
        }
    }

    fn comma(&mut self) {
        if !self.out.ends_with('{') {
            self.out.push(',');
        }
    }
}

impl<'s> Labels<'_, 's> {
    pub fn add(&mut self, name: &str, value: &str) -> &mut Self {
        match &mut self.0 {
            Out::Text(t) => {
                t.materialize();
                t.comma();
                write_label(t.out, name, value);
            }
            Out::Pairs(pairs) => pairs.push(pair(name, value)),
        }
        self
    }

    pub fn set(&mut self, set: &'s LabelSet) -> &mut Self {
        match &mut self.0 {
            Out::Text(t) => {
                if set.text.is_empty() {
                    return self;
                }
                if !t.started && t.pending.is_none() {
                    t.pending = Some(set);
                    return self;
                }
                t.materialize();
                t.comma();
                t.out.push_str(&set.text);
            }
            Out::Pairs(pairs) => pairs.extend(set.pairs.iter().map(|(n, v)| pair(n, v))),
        }
        self
    }
}

fn pair(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

/// `name="value"`, the value escaped as the text format requires.
fn write_label(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    if value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
    } else {
        out.push_str(value);
    }
    out.push('"');
}

/// Where the exposition text is written: a `String`, or the byte buffer a scrape reuses.
pub trait Text {
    fn push_str(&mut self, s: &str);
}

impl Text for String {
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }
}

impl Text for Vec<u8> {
    fn push_str(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
}

/// A [`Text`] that can be sized ahead.
pub trait Reserve {
    /// Room for `total` bytes in all.
    fn reserve_total(&mut self, total: usize);
    fn written(&self) -> usize;
}

impl Reserve for String {
    fn reserve_total(&mut self, total: usize) {
        self.reserve(total.saturating_sub(self.len()));
    }
    fn written(&self) -> usize {
        self.len()
    }
}

impl Reserve for Vec<u8> {
    fn reserve_total(&mut self, total: usize) {
        self.reserve(total.saturating_sub(self.len()));
    }
    fn written(&self) -> usize {
        self.len()
    }
}

/// Largest magnitude written through the integer paths (exact in an f64).
const EXACT: f64 = 9.0e15;

/// `value` as `format` says; non-finite values never reach here (the walk omits them). The
/// common cases (integers, six decimals) are written by hand: a scrape writes thousands.
fn write_value(out: &mut impl Text, format: Format, value: f64) {
    match format {
        Format::Integer if value.abs() < EXACT => write_int(out, value.round() as i64),
        Format::Integer => out.push_str(&format!("{value:.0}")),
        Format::Fixed6 => {
            let exact = value.abs() * 1e6;
            let scaled = exact.round();
            // Near a half the product's rounding could flip the last digit: the formatter
            // rounds the exact decimal.
            if scaled >= EXACT || ((exact - exact.trunc()) - 0.5).abs() < 1e-6 {
                out.push_str(&format!("{value:.6}"));
                return;
            }
            let n = scaled as u64;
            if value < 0.0 {
                out.push_str("-");
            }
            write_uint(out, n / 1_000_000);
            out.push_str(".");
            let fraction = n % 1_000_000;
            let mut digits = [b'0'; 6];
            let mut rest = fraction;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            out.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
        }
        Format::Shortest if value.fract() == 0.0 && value.abs() < EXACT => {
            write_int(out, value as i64)
        }
        Format::Shortest => out.push_str(&format!("{value}")),
    }
}

fn write_int(out: &mut impl Text, value: i64) {
    if value < 0 {
        out.push_str("-");
    }
    write_uint(out, value.unsigned_abs());
}

fn write_uint(out: &mut impl Text, mut value: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[at..]).unwrap_or("0"));
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Gauge => "gauge",
        Kind::Counter => "counter",
    }
}

/// One family of the text template.
struct TextFamily {
    name: &'static str,
    format: Format,
    /// `# HELP …\n# TYPE …\n`
    header: String,
    /// Every series' `name{labels} `, one after the other (one allocation per family).
    prefixes: String,
    series: Vec<TextSeries>,
}

struct TextSeries {
    id: u64,
    prefix: Prefix,
    value: f64,
}

/// A series' text before its value.
enum Prefix {
    /// `name{labels} ` at `start..end` of the family's `prefixes`.
    Own { start: usize, end: usize },
    /// Labels shared with other series: `name{` + these + `} `.
    Shared(Arc<str>),
}

/// The exposition text of a series set: each series' name and labels rendered once, values
/// written at every encode.
pub struct Template {
    families: Vec<TextFamily>,
    /// Length of the last encoding, to size the next.
    last_len: usize,
}

/// Builds a [`Template`].
#[derive(Default)]
pub struct TextBuilder {
    families: Vec<TextFamily>,
}

impl Sink for TextBuilder {
    fn family(&mut self, def: &'static MetricDef) {
        let mut header = String::with_capacity(def.help.len() + 2 * def.name.len() + 24);
        header.push_str("# HELP ");
        header.push_str(def.name);
        header.push(' ');
        for c in def.help.chars() {
            match c {
                '\\' => header.push_str("\\\\"),
                '\n' => header.push_str("\\n"),
                c => header.push(c),
            }
        }
        header.push_str("\n# TYPE ");
        header.push_str(def.name);
        header.push(' ');
        header.push_str(kind_name(def.kind));
        header.push('\n');
        // Families of one naming have about as many series with as long labels: size the next
        // like the last.
        let (bytes, series) = self
            .families
            .last()
            .map_or((0, 0), |f| (f.prefixes.len(), f.series.len()));
        self.families.push(TextFamily {
            name: def.name,
            format: def.format,
            header,
            prefixes: String::with_capacity(bytes + bytes / 4),
            series: Vec::with_capacity(series),
        });
    }

    fn series<'s>(&mut self, id: u64, labels: impl FnOnce(&mut Labels<'_, 's>), value: f64) {
        let Some(family) = self.families.last_mut() else {
            return;
        };
        let start = family.prefixes.len();
        let mut written = Labels(Out::Text(TextLabels {
            out: &mut family.prefixes,
            name: family.name,
            started: false,
            pending: None,
        }));
        labels(&mut written);
        let Out::Text(t) = written.0 else {
            return;
        };
        let prefix = match (t.started, t.pending) {
            (false, Some(set)) => Prefix::Shared(set.shared()),
            (false, None) => {
                t.out.push_str(family.name);
                t.out.push(' ');
                Prefix::Own {
                    start,
                    end: t.out.len(),
                }
            }
            (true, _) => {
                t.out.push_str("} ");
                Prefix::Own {
                    start,
                    end: t.out.len(),
                }
            }
        };
        family.series.push(TextSeries { id, prefix, value });
    }
}

/// Writes new values into a template built for the same series set; notices when the set
/// differs (a device stopped reporting a value, an XID appeared) so the caller rebuilds.
pub struct Refresher<'t> {
    families: &'t mut [TextFamily],
    current: Option<usize>,
    next: usize,
    same: bool,
}

impl Refresher<'_> {
    /// The series of the current family are all accounted for.
    fn close(&mut self) {
        if let Some(f) = self.current {
            if self.next != self.families[f].series.len() {
                self.same = false;
            }
        }
    }
}

impl Sink for Refresher<'_> {
    fn family(&mut self, def: &'static MetricDef) {
        self.close();
        let f = self.current.map_or(0, |f| f + 1);
        self.current = Some(f);
        self.next = 0;
        if self
            .families
            .get(f)
            .is_none_or(|family| family.name != def.name)
        {
            self.same = false;
        }
    }

    fn series<'s>(&mut self, id: u64, _labels: impl FnOnce(&mut Labels<'_, 's>), value: f64) {
        if !self.same {
            return;
        }
        let Some(f) = self.current else {
            self.same = false;
            return;
        };
        let i = self.next;
        self.next += 1;
        match self.families[f].series.get_mut(i) {
            Some(series) if series.id == id => series.value = value,
            _ => self.same = false,
        }
    }
}

impl Template {
    /// The template of the series `emit` walks into the builder.
    pub fn new(emit: impl FnOnce(&mut TextBuilder)) -> Self {
        let mut builder = TextBuilder::default();
        emit(&mut builder);
        Self {
            families: builder.families,
            last_len: 0,
        }
    }

    /// Write the values `emit` walks into the template. False when the walk has a different
    /// series set (the template is then unusable: build a new one).
    pub fn refresh(&mut self, emit: impl FnOnce(&mut Refresher<'_>)) -> bool {
        let families = self.families.len();
        let mut refresher = Refresher {
            families: &mut self.families,
            current: None,
            next: 0,
            same: true,
        };
        emit(&mut refresher);
        refresher.close();
        refresher.same && refresher.current.map_or(0, |f| f + 1) == families
    }

    /// The text exposition of the non-empty families.
    pub fn encode(&mut self) -> String {
        let mut out = String::new();
        self.encode_into(&mut out);
        out
    }

    /// The same, written into `out` (a buffer reused from the last scrape, cleared).
    pub fn encode_into<T: Text + Reserve>(&mut self, out: &mut T) {
        if self.last_len == 0 {
            // Labels, headers, and ~24 bytes per value.
            self.last_len = self
                .families
                .iter()
                .map(|f| {
                    let shared: usize = f
                        .series
                        .iter()
                        .map(|s| match &s.prefix {
                            Prefix::Shared(labels) => f.name.len() + labels.len() + 3,
                            Prefix::Own { .. } => 0,
                        })
                        .sum();
                    f.header.len() + f.prefixes.len() + shared + 24 * f.series.len()
                })
                .sum();
        }
        out.reserve_total(self.last_len + self.last_len / 8 + 4096);
        for family in self.families.iter().filter(|f| !f.series.is_empty()) {
            out.push_str(&family.header);
            for series in &family.series {
                match &series.prefix {
                    Prefix::Own { start, end } => out.push_str(&family.prefixes[*start..*end]),
                    Prefix::Shared(labels) => {
                        out.push_str(family.name);
                        out.push_str("{");
                        out.push_str(labels);
                        out.push_str("} ");
                    }
                }
                write_value(out, family.format, series.value);
                out.push_str("\n");
            }
        }
        self.last_len = out.written();
    }

    /// Series in the template.
    pub fn len(&self) -> usize {
        self.families.iter().map(|f| f.series.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Builds protobuf families (the [`prometheus::core::Collector`] path, and tests).
#[derive(Default)]
pub struct ProtoBuilder {
    pub families: Vec<MetricFamily>,
}

impl Sink for ProtoBuilder {
    fn family(&mut self, def: &'static MetricDef) {
        let mut mf = MetricFamily::default();
        mf.set_name(def.name.to_string());
        mf.set_help(def.help.to_string());
        mf.set_field_type(match def.kind {
            Kind::Gauge => MetricType::GAUGE,
            Kind::Counter => MetricType::COUNTER,
        });
        self.families.push(mf);
    }

    fn series<'s>(&mut self, _id: u64, labels: impl FnOnce(&mut Labels<'_, 's>), value: f64) {
        let Some(mf) = self.families.last_mut() else {
            return;
        };
        let mut pairs = Vec::new();
        labels(&mut Labels(Out::Pairs(&mut pairs)));
        let mut metric = Metric::from_label(pairs);
        if mf.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            metric.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            metric.set_gauge(g);
        }
        mf.mut_metric().push(metric);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(format: Format, value: f64) -> String {
        let mut out = String::new();
        write_value(&mut out, format, value);
        out
    }

    #[test]
    fn values_are_written_as_the_standard_formatter_would() {
        for v in [
            0.0, 1.0, 87.0, -3.0, 412.5, 0.8, 0.123456, 1.5e9, 1.98e9, 9.9e15, 1e21, 5e-7, 0.1,
            123456.789, -0.25, 0.0000015, 2.5e-6, 0.3333333,
        ] {
            assert_eq!(written(Format::Fixed6, v), format!("{v:.6}"), "{v}");
            let int = if v.abs() < EXACT {
                format!("{}", v.round() as i64)
            } else {
                format!("{v:.0}")
            };
            assert_eq!(written(Format::Integer, v), int, "{v}");
            let shortest = written(Format::Shortest, v);
            assert_eq!(shortest.parse::<f64>().unwrap(), v, "{v}");
            if v.fract() == 0.0 && v.abs() < 1e15 {
                assert_eq!(shortest, format!("{}", v as i64));
            }
        }
        assert_eq!(written(Format::Integer, 61.0), "61");
        assert_eq!(written(Format::Fixed6, 99.5), "99.500000");
        assert_eq!(written(Format::Shortest, 1.98e9), "1980000000");
    }
}
