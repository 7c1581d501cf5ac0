//! How deep an event must be buried before teepay acts on it, per chain kind. The hub's
//! RESOLVE is irreversible, so the outcome it follows must not be reorganized away: a depth
//! at which the chain does not reorganize in practice is the default, and operators may only
//! ask for more, or knowingly less (`confirmations` in the configs).

use teepay_types::ChainId;

/// Ethereum's finality: a block is finalized two epochs (64 slots) after it, under normal
/// conditions; deeper reorganizations need a third of all stake to be slashed.
pub const ETHEREUM_FINALITY: u64 = 64;

/// Polygon PoS: Heimdall checkpoints land on Ethereum every few hundred blocks, and
/// reorganizations of over a hundred blocks have been seen before its fast-finality fork.
pub const POLYGON_POS_FINALITY: u64 = 256;

/// Chain ids of local development nodes (anvil and hardhat use 31337; teepay's demo and CI
/// run further anvils at 31338 and 31339; `geth --dev` uses 1337). A single local node
/// reorganizes only when told to, so its head is final.
pub const LOCAL_DEV_CHAINS: [u64; 4] = [1337, 31337, 31338, 31339];

/// The confirmation depth used when none is configured: 0 for a local development node,
/// the chain's finality depth for the chains listed, and Ethereum's for any other chain
/// (the safe side: an unknown chain waits as long as Ethereum's finality).
pub fn default_confirmations(chain: ChainId) -> u64 {
    match chain.0 {
        id if LOCAL_DEV_CHAINS.contains(&id) => 0,
        137 => POLYGON_POS_FINALITY,
        _ => ETHEREUM_FINALITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_chains_wait_for_ethereum_finality_and_local_nodes_do_not() {
        assert_eq!(default_confirmations(ChainId(1)), 64);
        assert_eq!(default_confirmations(ChainId(11_155_111)), 64);
        assert_eq!(default_confirmations(ChainId(424_242)), 64, "unknown: the safe side");
        assert_eq!(default_confirmations(ChainId(137)), 256);
        assert_eq!(default_confirmations(ChainId(31337)), 0);
    }
}
