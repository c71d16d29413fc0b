//! State a simulated thermostat shares with the test that drives it: changed in place, read as
//! a snapshot, and awaited until a condition holds (never slept on).

use std::fmt::Debug;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

pub struct Observed<T> {
    state: Mutex<T>,
    version: watch::Sender<u64>,
}

impl<T: Clone + Debug + Default> Default for Observed<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: Clone + Debug> Observed<T> {
    pub fn new(state: T) -> Self {
        Self { state: Mutex::new(state), version: watch::channel(0).0 }
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self) -> T {
        self.lock().clone()
    }

    /// Reads without waking anyone.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.lock())
    }

    /// Changes the state and wakes whoever waits on it.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let out = f(&mut self.lock());
        self.version.send_modify(|v| *v += 1);
        out
    }

    /// Waits until `cond` holds, or fails after `limit` naming `what` and showing the state.
    pub async fn wait_for(&self, limit: Duration, what: &str, cond: impl Fn(&T) -> bool) -> io::Result<T> {
        let mut rx = self.version.subscribe();
        let wait = async {
            loop {
                {
                    let s = self.lock();
                    if cond(&s) {
                        return s.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    return self.get();
                }
            }
        };
        tokio::time::timeout(limit, wait).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, format!("did not see {what} within {limit:?}: {:?}", self.get()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waiting_ends_when_the_condition_holds_and_times_out_otherwise() {
        let o = Arc::new(Observed::new(0u32));
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { o2.wait_for(Duration::from_secs(5), "three", |v| *v == 3).await });
        for _ in 0..3 {
            o.update(|v| *v += 1);
        }
        assert_eq!(waiter.await.unwrap().unwrap(), 3);
        let err = o.wait_for(Duration::from_millis(10), "four", |v| *v == 4).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("four"));
    }
}
