//! What a channel, a payment, a swap transfer or an invoice is denominated in (DESIGN §11).
//! A channel holds one asset; a route uses channels of one asset only, so every leg names
//! the asset it moves and every node checks it against the channels it holds.

use crate::ids::Address;
use borsh::{BorshDeserialize, BorshSerialize};
use std::fmt;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, BorshSerialize, BorshDeserialize,
)]
pub enum Asset {
    /// The chain's own ether.
    #[default]
    Native,
    /// One ERC-20 token, by its contract address.
    Erc20(Address),
}

impl Asset {
    /// The asset of a channel whose `token` field is `token` (the zero address: ether).
    pub fn from_token(token: Address) -> Asset {
        if token == Address::default() { Asset::Native } else { Asset::Erc20(token) }
    }

    /// The `token` field of a channel holding this asset (the zero address for ether), as
    /// the contract stores it.
    pub fn token(self) -> Address {
        match self {
            Asset::Native => Address::default(),
            Asset::Erc20(token) => token,
        }
    }

    pub fn is_native(self) -> bool {
        self == Asset::Native
    }

    /// False for a token at the zero address: that is ether's `token` field, so it would be a
    /// second name for ether. Nothing that moves value may name an asset that way.
    pub fn is_well_formed(self) -> bool {
        self != Asset::Erc20(Address::default())
    }
}

impl fmt::Display for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Asset::Native => write!(f, "ether"),
            Asset::Erc20(token) => write!(f, "token {token}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zero_token_is_ether_and_back() {
        assert_eq!(Asset::from_token(Address::default()), Asset::Native);
        let usdc = Address([7; 20]);
        assert_eq!(Asset::from_token(usdc), Asset::Erc20(usdc));
        assert_eq!(Asset::Erc20(usdc).token(), usdc);
        assert_eq!(Asset::Native.token(), Address::default());
        assert!(Asset::Native.is_well_formed() && Asset::Erc20(usdc).is_well_formed());
        assert!(!Asset::Erc20(Address::default()).is_well_formed(), "ether under another name");
    }
}
