//! Detached responses over TLS: how many were reduced to their send key (`conn::sealed`) and
//! how many kept rustls because it was not ready to let go.

use super::exposition::{Exposition, Kind};
use super::series::Counter;

pub struct Sealing {
    sealed: Counter,
    kept: Counter,
}

pub static SEALING: Sealing = Sealing { sealed: Counter::new(), kept: Counter::new() };

impl Sealing {
    pub fn sealed(&self) {
        self.sealed.add(1);
    }

    pub fn kept(&self) {
        self.kept.add(1);
    }

    pub fn render(&self, out: &mut Exposition) {
        out.single(
            "roost_tls_sealed_total",
            Kind::Counter,
            "Held TLS responses (subscribes, event streams) that keep only their send key once the head is out.",
            self.sealed.get() as f64,
        );
        out.single(
            "roost_tls_seal_skipped_total",
            Kind::Counter,
            "Held TLS responses left to rustls whole: the peer had closed, or rustls still had records to send.",
            self.kept.get() as f64,
        );
    }
}
