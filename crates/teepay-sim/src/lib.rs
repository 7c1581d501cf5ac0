//! teepay-sim: a deterministic in-memory harness for the teepay protocol — node enclaves,
//! the hub enclave and a model of the contract's settlement rule — with a scheduler that
//! delivers, drops, duplicates, reorders and forges messages, crashes and restarts any
//! enclave from its last sealed blob, and ejects locked channels; plus the exhaustive and
//! random schedule checkers behind `teepay check`.

mod actions;
pub mod contract;
pub mod explore;
mod hostile;
pub mod invariants;
pub mod rng;
pub mod scenarios;
pub mod world;

pub use explore::{Counterexample, ExploreReport, explore, random_schedule};
pub use world::{Action, Budget, Envelope, Lie, Target, Violation, World};
