//! Detached responses over TLS: how many were reduced to their send key (`conn::sealed`) and
//! how many were not. One per running server (its device port counts, `/metrics` shows).

use super::exposition::{Exposition, Kind};
use super::series::Counter;

#[derive(Default)]
pub struct Sealing {
    sealed: Counter,
    skipped: Counter,
}

impl Sealing {
    pub fn sealed(&self) {
        self.sealed.add(1);
    }

    pub fn skipped(&self) {
        self.skipped.add(1);
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
            "Held TLS responses not sealed: the peer had closed, a write failed, or rustls had records left to send or gave no key.",
            self.skipped.get() as f64,
        );
    }
}
