//! What a remote peer can make the hub hold or do before and after it authenticates (issue 14
//! item 10): a link is accepted only within a handshake rate, a number of handshakes in
//! progress and a number of open connections; a handshake has a deadline; the hub enclave
//! signs a link only for a peer whose attestation quote verifies; a connected node has a
//! bounded number of messages waiting for the executor and a bounded queue of messages to
//! it (a node that does not read is dropped, not buffered for).

use std::sync::Arc;
use std::time::{Duration, Instant};
use teepay_types::{Address, Hash32, Quote};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Handshakes in progress at once: more are refused at accept (a peer that stalls its
/// handshake holds a slot until [`HANDSHAKE_DEADLINE`]).
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// A handshake not complete by then is dropped.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// New connections accepted per second, sustained (bursts up to twice that).
pub const HANDSHAKES_PER_SECOND: u32 = 200;
/// Open connections, authenticated or not.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Messages from one node read but not yet handled by the executor: beyond it the hub stops
/// reading that connection (TCP backpressure), so a fast sender cannot grow the hub's queue.
pub const INBOUND_PER_CONNECTION: usize = 1024;
/// Messages queued to one node and not yet written: a node that stops reading is dropped.
pub const OUTBOUND_PER_CONNECTION: usize = 4096;
/// Pause after a failed `accept` (e.g. out of file descriptors), instead of spinning.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The attestation the hub requires of a peer before its enclave signs the link: the
/// authority and node measurements of the hub enclave's own configuration.
#[derive(Debug, Clone)]
pub struct QuotePolicy {
    pub authority: Address,
    pub measurements: Vec<Hash32>,
}

impl QuotePolicy {
    /// True iff `credentials` decode to a quote of `peer`'s enclave that verifies.
    pub fn admits(&self, peer: Address, credentials: &[u8]) -> bool {
        let Ok(quote) = teepay_types::encoding::decode::<Quote>(credentials) else { return false };
        quote.report.enclave == peer && quote.verify(self.authority, &self.measurements).is_ok()
    }
}

/// A token bucket: at most `rate` per second sustained, `2 × rate` at once.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub fn per_second(rate: u32) -> Self {
        RateLimit { rate: f64::from(rate), tokens: 2.0 * f64::from(rate), at: Instant::now() }
    }

    /// Takes a token if one is left at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(2.0 * self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The accept loop's limits; a connection holds its permits for as long as they apply.
#[derive(Debug, Clone)]
pub struct Limits {
    handshakes: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

/// Why a connection was turned away at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Rate,
    Handshakes,
    Connections,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl Limits {
    /// Permits for a new connection (its lifetime, its handshake), or why there are none.
    pub fn admit(
        &self,
        rate: &mut RateLimit,
        now: Instant,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Refusal> {
        let connection = self.connections.clone().try_acquire_owned().map_err(|_| Refusal::Connections)?;
        let handshake = self.handshakes.clone().try_acquire_owned().map_err(|_| Refusal::Handshakes)?;
        if !rate.try_take(now) {
            return Err(Refusal::Rate);
        }
        Ok((connection, handshake))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_sustained_rate() {
        let start = Instant::now();
        let mut rate = RateLimit::per_second(10);
        assert_eq!((0..30).filter(|_| rate.try_take(start)).count(), 20, "a burst of twice the rate");
        assert!(!rate.try_take(start));
        assert!(rate.try_take(start + Duration::from_millis(100)), "one token per 1/rate");
        assert!(!rate.try_take(start + Duration::from_millis(100)));
    }

    #[test]
    fn permits_bound_handshakes_and_connections() {
        let limits = Limits::default();
        let mut rate = RateLimit::per_second(1_000_000);
        let now = Instant::now();
        let mut held = Vec::new();
        for _ in 0..MAX_PENDING_HANDSHAKES {
            held.push(limits.admit(&mut rate, now).unwrap());
        }
        assert_eq!(limits.admit(&mut rate, now).unwrap_err(), Refusal::Handshakes);
        // Handshakes done: their slots free up, the connections stay counted.
        let connections: Vec<_> = held.into_iter().map(|(c, _)| c).collect();
        assert!(limits.admit(&mut rate, now).is_ok());
        assert_eq!(connections.len(), MAX_PENDING_HANDSHAKES);
    }

    #[test]
    fn only_a_verifying_quote_of_the_peer_is_admitted() {
        use teepay_types::{ChainId, Report, SigningKey};
        let authority = SigningKey::from_entropy([1; 32]).unwrap();
        let node = SigningKey::from_entropy([2; 32]).unwrap();
        let policy = QuotePolicy { authority: authority.address(), measurements: vec![[7; 32]] };
        let quote = Report::of(&node, [7; 32], ChainId(0)).attest(&authority);
        let encoded = teepay_types::encoding::encode(&quote);
        assert!(policy.admits(node.address(), &encoded));
        assert!(!policy.admits(Address([9; 20]), &encoded), "another peer's quote");
        assert!(!policy.admits(node.address(), &[]), "no quote");
        assert!(!policy.admits(node.address(), &encoded[..encoded.len() - 1]), "truncated");
        let forged = Report::of(&node, [7; 32], ChainId(0)).attest(&node);
        assert!(
            !policy.admits(node.address(), &teepay_types::encoding::encode(&forged)),
            "not the authority"
        );
        let other = Report::of(&node, [8; 32], ChainId(0)).attest(&authority);
        assert!(!policy.admits(node.address(), &teepay_types::encoding::encode(&other)), "measurement");
    }
}
