//! What an operator asks first about the process: which version runs, since when, and (on
//! Linux, from `/proc`) its memory, CPU time and file descriptors. Read when scraped.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::exposition::{Exposition, Kind};

static STARTED: LazyLock<f64> =
    LazyLock::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));

/// Notes the start time (called once the server starts; later calls keep the first).
pub fn mark_start() {
    LazyLock::force(&STARTED);
}

pub fn render(out: &mut Exposition) {
    out.family("roost_build_info", Kind::Gauge, "Always 1; the version label says which roost is running.");
    out.sample("roost_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    out.single(
        "process_start_time_seconds",
        Kind::Gauge,
        "When the server started, in seconds since the Unix epoch.",
        *STARTED,
    );
    #[cfg(target_os = "linux")]
    linux(out);
}

#[cfg(target_os = "linux")]
fn linux(out: &mut Exposition) {
    if let Some(kib) = std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(resident_kib) {
        out.single("process_resident_memory_bytes", Kind::Gauge, "Resident memory.", (kib * 1024) as f64);
    }
    if let Some(ticks) = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(cpu_ticks) {
        let per_second = rustix::param::clock_ticks_per_second().max(1);
        out.single(
            "process_cpu_seconds_total",
            Kind::Counter,
            "User and system CPU time spent.",
            ticks as f64 / per_second as f64,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.single("process_open_fds", Kind::Gauge, "Open file descriptors (sockets included).", fds.count() as f64);
    }
    if let Some(max) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        out.single("process_max_fds", Kind::Gauge, "The file descriptor limit.", max as f64);
    }
}

/// `VmRSS` of `/proc/self/status`, in KiB.
fn resident_kib(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// User plus system time of `/proc/self/stat`, in clock ticks. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its closing `)`: utime and stime
/// are the 14th and 15th fields.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_by_field() {
        let status = "Name:\troost\nVmPeak:\t  99999 kB\nVmRSS:\t   15432 kB\nThreads:\t9\n";
        assert_eq!(resident_kib(status), Some(15432));
        assert_eq!(resident_kib("Name:\troost\n"), None);
        let stat = "4242 (ro ost) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("4242 (roost) S 1"), None);
    }
}
