//! Where the families' series go: the text template a scrape serves ([`Template`]), refreshed in
//! place while the series set stays the same, or protobuf families for the
//! [`prometheus::core::Collector`] path ([`ProtoBuilder`]).
//!
//! The walk over the series (`super::families::emit`) is the same for all of them, so building
//! and refreshing can never disagree about which value belongs to which series.

use std::fmt::Write as _;

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use super::names::{Format, Kind, MetricDef};

/// Receives the series of every family in order.
pub trait Sink {
    /// The next family starts.
    fn family(&mut self, def: &'static MetricDef);
    /// A series of the current family; `id` identifies it within the family for a given
    /// snapshot and attribution (so that a refresh can tell the series set changed). Labels are a
    /// closure so that a refresh builds none.
    fn series(&mut self, id: u64, labels: impl FnOnce(&mut Labels<'_>), value: f64);
}

/// Labels rendered once and reused by many series (a device's labels).
#[derive(Debug, Clone, Default)]
pub struct LabelSet {
    pairs: Vec<(&'static str, String)>,
    /// `a="x",b="y"`, escaped.
    text: String,
}

impl LabelSet {
    pub fn push(&mut self, name: &'static str, value: &str) {
        if !self.text.is_empty() {
            self.text.push(',');
        }
        write_label(&mut self.text, name, value);
        self.pairs.push((name, value.to_string()));
    }
}

/// The labels of one series, as they are written.
pub struct Labels<'a>(Out<'a>);

enum Out<'a> {
    /// Text after `name{`.
    Text(&'a mut String),
    Pairs(&'a mut Vec<LabelPair>),
}

impl Labels<'_> {
    pub fn add(&mut self, name: &str, value: &str) -> &mut Self {
        match &mut self.0 {
            Out::Text(out) => {
                if !out.ends_with('{') {
                    out.push(',');
                }
                write_label(out, name, value);
            }
            Out::Pairs(pairs) => pairs.push(pair(name, value)),
        }
        self
    }

    pub fn set(&mut self, set: &LabelSet) -> &mut Self {
        match &mut self.0 {
            Out::Text(out) => {
                if set.text.is_empty() {
                    return self;
                }
                if !out.ends_with('{') {
                    out.push(',');
                }
                out.push_str(&set.text);
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
    if value.contains(['\\', '"', '\n']) {
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

/// `value` as `format` says; non-finite values never reach here (the walk omits them).
fn write_value(out: &mut String, format: Format, value: f64) {
    match format {
        Format::Integer => {
            let _ = write!(out, "{}", value.round() as i64);
        }
        Format::Fixed6 => {
            let _ = write!(out, "{value:.6}");
        }
        Format::Shortest => {
            if value.fract() == 0.0 && value.abs() < 1e15 {
                let _ = write!(out, "{}", value as i64);
            } else {
                let _ = write!(out, "{value}");
            }
        }
    }
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
    series: Vec<TextSeries>,
}

struct TextSeries {
    id: u64,
    /// `name{labels} `
    prefix: Box<str>,
    value: f64,
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
        self.families.push(TextFamily {
            name: def.name,
            format: def.format,
            header,
            series: Vec::new(),
        });
    }

    fn series(&mut self, id: u64, labels: impl FnOnce(&mut Labels<'_>), value: f64) {
        let Some(family) = self.families.last_mut() else {
            return;
        };
        let mut prefix = String::with_capacity(family.name.len() + 160);
        prefix.push_str(family.name);
        prefix.push('{');
        labels(&mut Labels(Out::Text(&mut prefix)));
        if prefix.ends_with('{') {
            prefix.pop();
        } else {
            prefix.push('}');
        }
        prefix.push(' ');
        family.series.push(TextSeries {
            id,
            prefix: prefix.into_boxed_str(),
            value,
        });
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

    fn series(&mut self, id: u64, _labels: impl FnOnce(&mut Labels<'_>), value: f64) {
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
        let mut out = String::with_capacity(self.last_len + self.last_len / 8 + 4096);
        for family in self.families.iter().filter(|f| !f.series.is_empty()) {
            out.push_str(&family.header);
            for series in &family.series {
                out.push_str(&series.prefix);
                write_value(&mut out, family.format, series.value);
                out.push('\n');
            }
        }
        self.last_len = out.len();
        out
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

    fn series(&mut self, _id: u64, labels: impl FnOnce(&mut Labels<'_>), value: f64) {
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
