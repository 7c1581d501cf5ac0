//! How the node's API reads an asset and an amount (DESIGN §11, human units): `0.1eth`,
//! `25gwei` or wei for ether; for a token, its base units or a decimal in its unit
//! (`12.5usdc`: the token contract's own `symbol()` and `decimals()`, or a symbol the owner
//! configured for the chain). The asset comes from the request's `asset` field (`eth`, a
//! token address or a configured symbol) or, when that is empty, from the amount's unit.
//! Anything ambiguous is refused with the forms that are accepted.

use crate::api::NodeApi;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use teepay_types::units::{Unit, ether_units, parse_amount};
use teepay_types::{Address, Amount, Asset, ChainId};
use tonic::Status;

/// Units read from token contracts, per (chain, token), shared by the API's clones. A token
/// whose contract does not answer is remembered for a minute, so a channel of a broken token
/// (any peer can open one) costs one chain call a minute, not one per `Info`. Bounded: what a
/// client can name grows neither map without limit.
#[derive(Debug, Clone, Default)]
pub struct UnitCache(std::sync::Arc<std::sync::Mutex<Units>>);

#[derive(Debug, Default)]
struct Units {
    known: HashMap<(ChainId, Address), Unit>,
    failed: HashMap<(ChainId, Address), (Instant, String)>,
}

const MAX_KNOWN_UNITS: usize = 4_096;
const MAX_FAILED_UNITS: usize = 1_024;
const RETRY_FAILED_UNIT: Duration = Duration::from_secs(60);

impl UnitCache {
    fn get(&self, key: (ChainId, Address)) -> Option<Result<Unit, String>> {
        let units = self.0.lock().expect("never poisoned");
        if let Some(unit) = units.known.get(&key) {
            return Some(Ok(unit.clone()));
        }
        match units.failed.get(&key) {
            Some((at, why)) if at.elapsed() < RETRY_FAILED_UNIT => Some(Err(why.clone())),
            _ => None,
        }
    }

    fn put(&self, key: (ChainId, Address), result: &Result<Unit, String>) {
        let mut units = self.0.lock().expect("never poisoned");
        match result {
            Ok(unit) if units.known.len() < MAX_KNOWN_UNITS => {
                units.failed.remove(&key);
                units.known.insert(key, unit.clone());
            }
            Ok(_) => {}
            Err(why) => {
                if units.failed.len() >= MAX_FAILED_UNITS {
                    units.failed.clear();
                }
                units.failed.insert(key, (Instant::now(), why.clone()));
            }
        }
    }
}

/// A token symbol the node's owner configured for one chain (`[[chains]] tokens` in node.toml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSymbol {
    pub chain: ChainId,
    /// Lower case; matched case-insensitively.
    pub symbol: String,
    pub token: Address,
}

/// The unit of `s` (`12.5usdc` → `usdc`), lower case; empty for a plain number or for
/// something that is no amount at all (`-5`, `abc`: parsing it then says why).
fn unit_of(s: &str) -> String {
    let s = s.trim();
    if !s.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return String::new();
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    s[split..].trim().to_ascii_lowercase()
}

fn is_ether_unit(unit: &str) -> bool {
    ether_units().iter().any(|u| u.symbol == unit)
}

impl NodeApi {
    fn configured(&self, chain: ChainId, symbol: &str) -> Option<Address> {
        self.tokens
            .iter()
            .find(|t| t.chain == chain && t.symbol.eq_ignore_ascii_case(symbol))
            .map(|t| t.token)
    }

    fn known_symbols(&self, chain: ChainId) -> String {
        let mut known: Vec<String> = vec!["eth".into()];
        known.extend(self.tokens.iter().filter(|t| t.chain == chain).map(|t| t.symbol.clone()));
        known.join(", ")
    }

    /// The asset a request names: its `asset` field if set, else the unit of its amount.
    pub(crate) fn asset_of(
        &self,
        chain: ChainId,
        field: &str,
        asset: &str,
        amount: &str,
    ) -> Result<Asset, Status> {
        let asset = asset.trim();
        let name = if asset.is_empty() { unit_of(amount) } else { asset.to_ascii_lowercase() };
        if name.is_empty() || name == "ether" || (asset.is_empty() && is_ether_unit(&name)) || name == "eth" {
            return Ok(Asset::Native);
        }
        if let Some(token) = Address::from_hex(&name) {
            return Ok(Asset::from_token(token));
        }
        self.configured(chain, &name).map(Asset::Erc20).ok_or_else(|| {
            Status::invalid_argument(format!(
                "{field}: unknown asset {name:?} on chain {}: use eth, a token's address, or a symbol configured for the chain ({})",
                chain.0,
                self.known_symbols(chain)
            ))
        })
    }

    /// The units an amount of `token` may be written in: its contract's symbol and any
    /// symbol configured for it, both with the contract's decimals. Read from the chain only
    /// for an amount that has a unit (base units need no lookup).
    async fn token_units(&self, chain: ChainId, token: Address) -> Result<Vec<Unit>, Status> {
        let unit = self.token_unit(chain, token).await?;
        let mut units = vec![unit.clone()];
        units.extend(
            self.tokens
                .iter()
                .filter(|t| t.chain == chain && t.token == token && t.symbol != unit.symbol)
                .map(|t| Unit::new(&t.symbol, unit.decimals)),
        );
        Ok(units)
    }

    /// `token`'s unit as its contract names it, read once (a failure: once a minute).
    async fn token_unit(&self, chain: ChainId, token: Address) -> Result<Unit, Status> {
        let link = self.link(chain)?;
        let result = match self.units.get((chain, token)) {
            Some(cached) => cached,
            None => {
                let read =
                    teepay_chain::contract::token_unit(&link.chain, token).await.map_err(|e| e.to_string());
                self.units.put((chain, token), &read);
                read
            }
        };
        result.map_err(|e| {
            Status::failed_precondition(format!("token {token} on {}: {e}", link.chain.describe()))
        })
    }

    /// The tokens this node knows on `chain` (configured, or held in a channel) with their
    /// units; a token whose contract does not answer is listed without one.
    pub(crate) async fn known_tokens(&self, chain: ChainId) -> Vec<teepay_api::pb::TokenInfo> {
        let mut tokens: Vec<Address> =
            self.tokens.iter().filter(|t| t.chain == chain).map(|t| t.token).collect();
        if let Ok(channels) = self.node.channels().await {
            tokens.extend(
                channels
                    .iter()
                    .filter(|c| c.chain == chain && c.token != Address::default())
                    .map(|c| c.token),
            );
        }
        tokens.sort();
        tokens.dedup();
        let mut out = Vec::with_capacity(tokens.len());
        for token in tokens {
            let unit = self.token_unit(chain, token).await.ok();
            out.push(teepay_api::pb::TokenInfo {
                token: token.to_string(),
                symbol: unit.as_ref().map(|u| u.symbol.clone()).unwrap_or_default(),
                decimals: unit.map_or(0, |u| u32::from(u.decimals)),
            });
        }
        out
    }

    /// An amount of `asset`: positive unless `zero_ok` (fee limits; empty is zero there).
    pub(crate) async fn amount_of(
        &self,
        chain: ChainId,
        asset: Asset,
        field: &str,
        s: &str,
        zero_ok: bool,
    ) -> Result<Amount, Status> {
        if zero_ok && s.trim().is_empty() {
            return Ok(Amount::ZERO);
        }
        let units = match asset {
            Asset::Native => ether_units(),
            Asset::Erc20(_) if unit_of(s).is_empty() => Vec::new(),
            Asset::Erc20(token) => self.token_units(chain, token).await?,
        };
        let amount =
            parse_amount(s, &units).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
        if amount.is_zero() && !zero_ok {
            return Err(Status::invalid_argument(format!("{field}: must be positive, got {}", s.trim())));
        }
        Ok(amount)
    }

    /// A transfer of a swap intent, its amounts in its asset's units.
    pub(crate) async fn transfer_of(
        &self,
        field: &str,
        t: &teepay_api::pb::Transfer,
    ) -> Result<teepay_types::Transfer, Status> {
        let chain = self.off_chain(ChainId(t.chain))?;
        let asset = self.asset_of(chain, &format!("{field}.asset"), &t.asset, &t.amount)?;
        Ok(teepay_types::Transfer {
            chain,
            asset,
            counterparty: teepay_api::parse_address(&format!("{field}.counterparty"), &t.counterparty)?,
            amount: self.amount_of(chain, asset, &format!("{field}.amount"), &t.amount, false).await?,
            max_fee: self.amount_of(chain, asset, &format!("{field}.max_fee"), &t.max_fee, true).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_kept_failures_remembered_and_both_bounded() {
        let cache = UnitCache::default();
        let key = |i: u16| (ChainId(1), Address::from_hex(&format!("{i:040x}")).unwrap());
        assert!(cache.get(key(1)).is_none(), "never asked");
        cache.put(key(1), &Err("no symbol()".into()));
        assert_eq!(
            cache.get(key(1)),
            Some(Err("no symbol()".into())),
            "a failure is not asked again at once"
        );
        cache.put(key(1), &Ok(Unit::new("usdc", 6)));
        assert_eq!(cache.get(key(1)), Some(Ok(Unit::new("usdc", 6))));
        for i in 2..(2 + MAX_FAILED_UNITS as u16 + 10) {
            cache.put(key(i), &Err("nothing there".into()));
        }
        let units = cache.0.lock().unwrap();
        assert!(units.failed.len() <= MAX_FAILED_UNITS && units.known.len() == 1);
    }

    #[test]
    fn the_unit_is_what_follows_the_number() {
        assert_eq!(unit_of(" 12.5USDC "), "usdc");
        assert_eq!(unit_of("12.5 usdc"), "usdc");
        assert_eq!(unit_of("1000"), "");
        assert_eq!(
            (unit_of("-5"), unit_of("usdc"), unit_of("")),
            (String::new(), String::new(), String::new())
        );
        assert!(is_ether_unit("gwei") && is_ether_unit("wei") && !is_ether_unit("usdc"));
    }
}
