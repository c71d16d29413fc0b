//! A strict reader of the Prometheus text format (0.0.4) for the `/metrics` tests: it refuses
//! anything a scraper could misread (a sample before its `# TYPE`, a family split in two, a
//! bad escape, a duplicate series, a histogram whose buckets are not cumulative or whose
//! `+Inf` bucket differs from its `_count`).

use std::collections::{BTreeMap, HashMap, HashSet};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Scrape {
    pub kinds: HashMap<String, Kind>,
    pub help: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the one series named `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
    }

    /// Like [`value`](Self::value), 0 when the series does not exist yet.
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    pub fn series(&self, name: &str) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if text.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')) => {
            text.parse().map_err(|_| format!("bad value '{text}'"))
        }
        _ => Err(format!("bad value '{text}'")),
    }
}

/// `{a="x",b="y"}` at the start of `text`; returns the labels and the rest.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let Some(mut rest) = text.strip_prefix('{') else { return Ok((labels, text)) };
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name '{name}'"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in a label value")),
                },
                Some((_, '\n')) => return Err("raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label '{name}' twice"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The family a sample belongs to: its own name, or a histogram's name for the
/// `_bucket`/`_sum`/`_count` samples.
fn family_of(name: &str, kinds: &HashMap<String, Kind>) -> Option<String> {
    if kinds.contains_key(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| kinds.get(*base) == Some(&Kind::Histogram))
        .map(str::to_string)
}

pub fn parse(text: &str) -> Result<Scrape, String> {
    if !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    let mut scrape = Scrape::default();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen_series: HashSet<(String, Labels)> = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |e: String| format!("line {}: {e}: {line}", n + 1);
        if line.is_empty() {
            return Err(fail("empty line".into()));
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let (keyword, rest) = comment.split_once(' ').ok_or_else(|| fail("bad comment".into()))?;
            let (name, rest) = rest.split_once(' ').ok_or_else(|| fail("comment without text".into()))?;
            if !valid_metric_name(name) {
                return Err(fail(format!("bad metric name '{name}'")));
            }
            if current.as_deref() != Some(name) {
                if finished.contains(name) {
                    return Err(fail(format!("family '{name}' appears twice")));
                }
                if let Some(previous) = current.replace(name.to_string()) {
                    finished.insert(previous);
                }
            }
            match keyword {
                "HELP" => {
                    let mut help = String::new();
                    let mut chars = rest.chars();
                    while let Some(c) = chars.next() {
                        if c != '\\' {
                            help.push(c);
                            continue;
                        }
                        match chars.next() {
                            Some('\\') => help.push('\\'),
                            Some('n') => help.push('\n'),
                            other => return Err(fail(format!("bad escape {other:?} in HELP"))),
                        }
                    }
                    if scrape.help.insert(name.to_string(), help).is_some() {
                        return Err(fail("second HELP".into()));
                    }
                }
                "TYPE" => {
                    if scrape.samples.iter().any(|s| family_of(&s.name, &scrape.kinds).as_deref() == Some(name)) {
                        return Err(fail("TYPE after samples".into()));
                    }
                    let kind = match rest {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        other => return Err(fail(format!("unexpected type '{other}'"))),
                    };
                    if scrape.kinds.insert(name.to_string(), kind).is_some() {
                        return Err(fail("second TYPE".into()));
                    }
                }
                other => return Err(fail(format!("unexpected comment '{other}'"))),
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| fail("no value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(fail(format!("bad metric name '{name}'")));
        }
        let (labels, rest) = parse_labels(&line[name_end..]).map_err(fail)?;
        let mut parts = rest.strip_prefix(' ').ok_or_else(|| fail("no space before the value".into()))?.split(' ');
        let value = parse_value(parts.next().unwrap_or_default()).map_err(fail)?;
        if let Some(ts) = parts.next() {
            ts.parse::<i64>().map_err(|_| fail(format!("bad timestamp '{ts}'")))?;
        }
        if parts.next().is_some() {
            return Err(fail("trailing text".into()));
        }
        let family = family_of(name, &scrape.kinds).ok_or_else(|| fail("sample without a TYPE".into()))?;
        if current.as_deref() != Some(family.as_str()) {
            return Err(fail(format!("sample of '{family}' outside its family's block")));
        }
        let kind = scrape.kinds[&family];
        if kind == Kind::Counter && (!name.ends_with("_total") || value < 0.0) {
            return Err(fail("a counter is named *_total and never negative".into()));
        }
        if kind == Kind::Histogram && name.ends_with("_bucket") != labels.contains_key("le") {
            return Err(fail("'le' belongs on _bucket samples, and only there".into()));
        }
        if !seen_series.insert((name.to_string(), labels.clone())) {
            return Err(fail("duplicate series".into()));
        }
        scrape.samples.push(Sample { name: name.to_string(), labels, value });
    }
    check_histograms(&scrape)?;
    Ok(scrape)
}

fn check_histograms(scrape: &Scrape) -> Result<(), String> {
    for (family, _) in scrape.kinds.iter().filter(|(_, k)| **k == Kind::Histogram) {
        let mut buckets: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in scrape.series(&format!("{family}_bucket")) {
            let mut labels = s.labels.clone();
            let le = labels.remove("le").unwrap_or_default();
            buckets.entry(labels).or_default().push((parse_value(&le)?, s.value));
        }
        for (labels, list) in buckets {
            let ordered = list.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            if !ordered {
                return Err(format!("{family}{labels:?}: buckets not ascending and cumulative: {list:?}"));
            }
            let flat: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let count = scrape.value(&format!("{family}_count"), &flat);
            let inf = list.last().filter(|(le, _)| le.is_infinite()).map(|(_, v)| *v);
            if inf.is_none() || inf != count {
                return Err(format!("{family}{labels:?}: +Inf bucket {inf:?} and _count {count:?} must agree"));
            }
            if scrape.value(&format!("{family}_sum"), &flat).is_none() {
                return Err(format!("{family}{labels:?}: no _sum"));
            }
        }
    }
    Ok(())
}

#[test]
fn the_reader_refuses_what_a_scraper_could_misread() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1\n\
                # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    let scrape = parse(good).unwrap();
    assert_eq!(scrape.value("a_total", &[("x", "q\"\\\n")]), Some(1.0));
    for bad in [
        "a_total 1\n",
        "# TYPE a_total counter\na_total 1",
        "# TYPE a_total counter\na_total{x=\"\\t\"} 1\n",
        "# TYPE a counter\na 1\n",
        "# TYPE a_total counter\na_total 1\n# TYPE b gauge\nb 1\na_total 2\n",
        "# TYPE a_total counter\na_total 1\na_total 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 3\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 3\nh_count 1\n",
        "# TYPE g gauge\ng{1x=\"a\"} 1\n",
        "# TYPE g gauge\ng one\n",
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}
