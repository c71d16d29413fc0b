//! The database writer's batches: how many commits each folds into one transaction, how long
//! the transaction takes, and how many failed. Updated by the writer (one call per batch).

use std::time::Duration;

use super::exposition::{Exposition, Kind};
use super::series::{Counter, Histogram, LATENCY_NS, SECONDS};

/// Commits per batch: powers of two up to the writer's largest batch.
const BATCH_COMMITS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

pub struct Writes {
    commits_per_batch: Histogram<{ BATCH_COMMITS.len() }>,
    commit_seconds: Histogram<{ LATENCY_NS.len() }>,
    failed_batches: Counter,
}

/// The process's writer (one per running server; tests that run several share it).
pub static WRITES: Writes = Writes {
    commits_per_batch: Histogram::new(BATCH_COMMITS, 1.0),
    commit_seconds: Histogram::new(LATENCY_NS, SECONDS),
    failed_batches: Counter::new(),
};

impl Writes {
    /// One batch of `commits` written in one transaction that took `took`.
    pub fn batch(&self, commits: usize, took: Duration, ok: bool) {
        self.commits_per_batch.observe(commits as u64);
        self.commit_seconds.observe_duration(took);
        if !ok {
            self.failed_batches.add(1);
        }
    }

    pub fn render(&self, out: &mut Exposition) {
        out.family(
            "roost_db_write_batch_commits",
            Kind::Histogram,
            "Commits folded into one database transaction by the writer (the _count is the number of batches, the _sum the number of commits).",
        );
        out.histogram("roost_db_write_batch_commits", &[], &self.commits_per_batch.snapshot());
        out.family(
            "roost_db_commit_duration_seconds",
            Kind::Histogram,
            "Time one write batch takes, from BEGIN to a durable COMMIT.",
        );
        out.histogram("roost_db_commit_duration_seconds", &[], &self.commit_seconds.snapshot());
        out.single(
            "roost_db_failed_batches_total",
            Kind::Counter,
            "Write batches whose transaction failed (their callers got an error, nothing was acknowledged).",
            self.failed_batches.get() as f64,
        );
    }
}
