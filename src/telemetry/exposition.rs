//! The Prometheus text exposition format (0.0.4), the format every Prometheus-compatible scraper
//! reads: per family a `# HELP` and a `# TYPE` line, then its samples; label values escaped;
//! a histogram as cumulative `_bucket{le="..."}` samples ending with `+Inf`, then `_sum` and
//! `_count`.

use std::fmt::Write;

use super::series::Snapshot;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A scrape being written. Families are written one after another, each with all its samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family; its samples follow before the next family starts.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape(&mut self.out, help, false);
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.as_str());
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        self.value(value);
    }

    /// A family of one sample without labels.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// One labelled histogram of the current family.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], snapshot: &Snapshot) {
        let mut le = String::new();
        for (bound, count) in &snapshot.buckets {
            le.clear();
            push_number(&mut le, *bound);
            self.bucket(name, labels, &le, *count);
        }
        self.bucket(name, labels, "+Inf", snapshot.count);
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        self.value(snapshot.sum);
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        self.value(snapshot.count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn bucket(&mut self, name: &str, labels: &[(&str, &str)], le: &str, count: u64) {
        let _ = write!(self.out, "{name}_bucket");
        self.labels(labels, Some(le));
        self.value(count as f64);
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let le = le.map(|le| ("le", le));
        for (i, (name, value)) in labels.iter().copied().chain(le).enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(name);
            self.out.push_str("=\"");
            escape(&mut self.out, value, true);
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn value(&mut self, value: f64) {
        self.out.push(' ');
        push_number(&mut self.out, value);
        self.out.push('\n');
    }
}

/// A sample value as Prometheus reads it (`+Inf`, `-Inf` and `NaN` spelt its way).
fn push_number(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

/// Text escaped as the format asks: backslash and newline always, double quotes in label values.
fn escape(out: &mut String, text: &str, quotes: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::series::Histogram;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Exposition::new();
        e.family("roost_things_total", Kind::Counter, "Things, with a \\ and\na newline.");
        e.sample("roost_things_total", &[("route", "/a/{id}"), ("odd", "q\"b\\n\nx")], 3.0);
        e.single("roost_up", Kind::Gauge, "Up.", 1.5);
        e.single("roost_inf", Kind::Gauge, "Inf.", f64::INFINITY);
        assert_eq!(
            e.finish(),
            "# HELP roost_things_total Things, with a \\\\ and\\na newline.\n\
             # TYPE roost_things_total counter\n\
             roost_things_total{route=\"/a/{id}\",odd=\"q\\\"b\\\\n\\nx\"} 3\n\
             # HELP roost_up Up.\n# TYPE roost_up gauge\nroost_up 1.5\n\
             # HELP roost_inf Inf.\n# TYPE roost_inf gauge\nroost_inf +Inf\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_ending_in_inf_then_sum_and_count() {
        let h = Histogram::new([1_000, 2_500], 1e3);
        for v in [500, 2_000, 2_400, 9_000] {
            h.observe(v);
        }
        let mut e = Exposition::new();
        e.family("roost_wait_seconds", Kind::Histogram, "Waits.");
        e.histogram("roost_wait_seconds", &[("port", "device")], &h.snapshot());
        assert_eq!(
            e.finish(),
            "# HELP roost_wait_seconds Waits.\n# TYPE roost_wait_seconds histogram\n\
             roost_wait_seconds_bucket{port=\"device\",le=\"1\"} 1\n\
             roost_wait_seconds_bucket{port=\"device\",le=\"2.5\"} 3\n\
             roost_wait_seconds_bucket{port=\"device\",le=\"+Inf\"} 4\n\
             roost_wait_seconds_sum{port=\"device\"} 13.9\n\
             roost_wait_seconds_count{port=\"device\"} 4\n"
        );
    }
}
