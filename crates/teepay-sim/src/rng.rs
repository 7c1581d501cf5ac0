//! The simulation's deterministic PRNG (shared with topologies and benches).

pub use teepay_types::rng::SplitMix64;
