//! A per-address rate limit (a token bucket per client address) for device routes that create
//! state for whoever asks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at once; past it idle ones are forgotten first.
const MAX_ADDRESSES: usize = 4096;

pub struct Throttle {
    burst: f64,
    every: Duration,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Throttle {
    /// `burst` requests at once, then one per `every`.
    pub fn new(burst: u32, every: Duration) -> Self {
        Self { burst: f64::from(burst), every, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request's worth for `addr`; `Err` carries the seconds until the next is allowed.
    pub fn take(&self, addr: IpAddr) -> Result<(), u64> {
        self.take_at(client(addr), Instant::now())
    }

    fn take_at(&self, addr: IpAddr, now: Instant) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        let refill = |(tokens, at): (f64, Instant)| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() / self.every.as_secs_f64()).min(self.burst)
        };
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&addr) {
            buckets.retain(|_, b| refill(*b) < self.burst);
            if buckets.len() >= MAX_ADDRESSES {
                buckets.clear();
            }
        }
        let tokens = buckets.get(&addr).map_or(self.burst, |b| refill(*b));
        if tokens < 1.0 {
            return Err(((1.0 - tokens) * self.every.as_secs_f64()).ceil() as u64);
        }
        buckets.insert(addr, (tokens - 1.0, now));
        Ok(())
    }
}

/// One client: an IPv4 address, or an IPv6 /64 (one host usually holds the whole prefix).
fn client(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_burst_then_a_steady_rate() {
        let t = Throttle::new(3, Duration::from_secs(10));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let start = Instant::now();
        for _ in 0..3 {
            assert!(t.take_at(a, start).is_ok());
        }
        assert_eq!(t.take_at(a, start), Err(10));
        assert!(t.take_at(b, start).is_ok(), "another address is not affected");
        assert!(t.take_at(a, start + Duration::from_secs(10)).is_ok());
        assert!(t.take_at(a, start + Duration::from_secs(11)).is_err());
    }

    #[test]
    fn an_ipv6_host_is_one_client() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(client(a), client(b));
        let mapped: IpAddr = "::ffff:192.168.1.5".parse().unwrap();
        assert_eq!(client(mapped), "192.168.1.5".parse::<IpAddr>().unwrap());
    }
}
