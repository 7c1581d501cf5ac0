//! The demo's token chapter (DESIGN §11): a USDC-like test token on chain A, channels of it
//! along user1 — i1 — i2 — user2, a token invoice paid across the three hops with its
//! receipt checked, a token-for-ether swap across both chains, and the closes and on-chain
//! checks for the token as for ether (conservation, exact payouts, a contract left empty).

use crate::world::ETHER;
use crate::{ContractViewOf, Story, book, settle, step};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::time::Instant;
use teepay_chain::contract::{deploy_token, mint_token, token_balance};
use teepay_enclave::{Request, Response};
use teepay_link::wire::WireStatus;
use teepay_node::onchain::{close, fund_of, open_channel_of};
use teepay_types::units::{Unit, format_token_with_base};
use teepay_types::{Address, Amount, Asset, ChannelId, Transfer};

/// The test token's decimals, like USDC's.
const DECIMALS: u8 = 6;
const USDC: u128 = 1_000_000;

/// The token, what each holder was minted, token channels and net token transfers.
pub(crate) struct DemoToken {
    address: Address,
    unit: Unit,
    minted: BTreeMap<Address, u128>,
    /// (opener, peer, channel): every token channel, all on chain A.
    channels: Vec<(&'static str, &'static str, ChannelId)>,
    /// Net token transfers of succeeded instances per node.
    ledger: BTreeMap<Address, i128>,
}

impl DemoToken {
    fn show(&self, amount: u128) -> String {
        format_token_with_base(Amount(amount), &self.unit)
    }

    fn book(&mut self, from: Address, to: Address, amount: u128) {
        *self.ledger.entry(from).or_default() -= amount as i128;
        *self.ledger.entry(to).or_default() += amount as i128;
    }
}

/// Deploys the token on chain A, mints 1,000 to each node on the route, and opens its
/// channels (300 a side: the opener's approval and open, the peer's approval and deposit).
pub(crate) async fn setup(s: &mut Story) -> Result<DemoToken> {
    step("3. Tokens: a USDC-like ERC-20 on chain A, channels of it along user1 — i1 — i2 — user2");
    let c = &s.w.chains[0];
    let deployer = teepay_chain::dev::dev_key(0);
    let address = deploy_token(&c.chain, &deployer, "Demo USD", "USDC", DECIMALS, 0).await?;
    let unit = Unit::new("usdc", DECIMALS);
    let mut token =
        DemoToken { address, unit, minted: BTreeMap::new(), channels: Vec::new(), ledger: BTreeMap::new() };
    for name in ["user1", "i1", "i2", "user2"] {
        let who = s.w.node(name).address;
        mint_token(&c.chain, &deployer, address, who, Amount(1_000 * USDC)).await?;
        token.minted.insert(who, 1_000 * USDC);
    }
    println!(
        "  USDC deployed at {address} ({DECIMALS} decimals); 1,000 USDC minted to user1, i1, i2 and user2"
    );
    let link = s.w.chains[0].link();
    for (a, b) in [("user1", "i1"), ("i1", "i2"), ("i2", "user2")] {
        let deposit = Amount(300 * USDC);
        let (id, r, approval) = open_channel_of(s.w.node(a), &link, s.w.node(b).address, address, deposit)
            .await
            .with_context(|| format!("{a} opens a token channel to {b}"))?;
        s.w.pay_gas(0, &r);
        approval.iter().for_each(|r| s.w.pay_gas(0, r));
        s.w.settle_sync().await?;
        let (r, approval) =
            fund_of(s.w.node(b), &link, id, deposit).await.with_context(|| format!("{b} funds in USDC"))?;
        s.w.pay_gas(0, &r);
        approval.iter().for_each(|r| s.w.pay_gas(0, r));
        println!(
            "  chain A: USDC channel {a} ⇄ {b}, 300 USDC each side (approve, then the contract pulls them)"
        );
        token.channels.push((a, b, id));
    }
    s.w.settle_sync().await?;
    let map = s.w.hub.control().await?.network().await;
    let held: usize =
        map.iter().filter(|((_, asset), _)| *asset == Asset::Erc20(address)).map(|(_, c)| c.len()).sum();
    println!(
        "  the hub routes USDC on a map of its own: {held} channels (the ether map beside it is unchanged)"
    );
    Ok(token)
}

/// user2 asks for 25 USDC; user1 pays it over the three token hops and holds the receipt.
pub(crate) async fn invoice(s: &mut Story, token: &mut DemoToken) -> Result<()> {
    let (chain, shop) = (s.w.chains[0].id, s.w.node("user2").address);
    let after = s.w.node("user2").events.as_ref().map_or(0, |log| log.last_seq());
    let request = Request::CreateInvoice {
        chain,
        asset: Asset::Erc20(token.address),
        amount: Some(Amount(25 * USDC)),
        memo_hash: teepay_types::keccak256(b"order #43"),
        expires_at: teepay_link::host::now_ms() + 600_000,
    };
    let Response::Invoice(invoice) = s.w.node("user2").enclave(request).await? else {
        bail!("unexpected enclave response")
    };
    println!("  user2 invoices {} (asset: the token, signed into the invoice)", token.show(25 * USDC));
    let t = Instant::now();
    let id = s.w.node("user1").pay_invoice(invoice.clone(), None, Amount(0)).await?;
    if settle(s, "user1", id, "token invoice paid across user1 → i1 → i2 → user2", t).await?
        != WireStatus::Succeeded
    {
        s.failures.push("the token invoice payment did not succeed".into());
        return Ok(());
    }
    token.book(s.w.node("user1").address, shop, 25 * USDC);
    match crate::kept_receipt(s, "user1", invoice.invoice.id()).await {
        Some(r) if r.proves_payment_of(&invoice) && r.amount == Amount(25 * USDC) => {
            println!("  ✔ user1's receipt verifies: user2 signed that user1 paid {}", token.show(r.amount.0))
        }
        _ => s.failures.push("user1 holds no receipt proving the token invoice payment".into()),
    }
    if let Some(log) = &s.w.node("user2").events {
        let mut sub = log.subscribe(after).map_err(anyhow::Error::msg)?;
        print!("  user2's event stream:");
        while sub.cursor() < log.last_seq() {
            let e = sub.next().await.map_err(anyhow::Error::msg)?;
            print!(" {}", e.kind);
        }
        println!();
    }
    Ok(())
}

/// user2 gives 40 USDC on chain A (user2 → i2 → i1 → user1) for user1's 0.02 ETH on chain B
/// (user1 → i4 → i3 → user2), all or nothing.
pub(crate) async fn swap_for_ether(s: &mut Story, token: &mut DemoToken) -> Result<()> {
    step("4. Token-for-ether swap: user2's 40 USDC on chain A for user1's 0.02 ETH on chain B");
    let (a, b) = (s.w.chains[0].id, s.w.chains[1].id);
    let (u1, u2) = (s.w.node("user1").address, s.w.node("user2").address);
    let usdc = Asset::Erc20(token.address);
    let t = |chain, asset, counterparty, amount| Transfer {
        chain,
        asset,
        counterparty,
        amount: Amount(amount),
        max_fee: Amount(0),
    };
    let expires_at = teepay_link::host::now_ms() + 60_000;
    let mut intents = Vec::new();
    for (party, gives, receives) in [
        ("user2", t(a, usdc, u1, 40 * USDC), t(b, Asset::Native, u1, ETHER / 50)),
        ("user1", t(b, Asset::Native, u2, ETHER / 50), t(a, usdc, u2, 40 * USDC)),
    ] {
        let req = Request::CreateSwapIntent { gives: vec![gives], receives: vec![receives], expires_at };
        match s.w.node(party).enclave(req).await? {
            Response::Order(o) => intents.push(o),
            _ => bail!("unexpected enclave response"),
        }
    }
    let started = Instant::now();
    let id = s.w.node("user2").swap(intents).await?;
    if settle(s, "user2", id, "token-for-ether swap", started).await? == WireStatus::Succeeded {
        token.book(u2, u1, 40 * USDC);
        book(s, b, u1, u2, ETHER / 50);
    } else {
        s.failures.push("the token-for-ether swap did not succeed".into());
    }
    Ok(())
}

/// Closes every token channel; each pays out exactly its parties' last off-chain balances.
pub(crate) async fn close_all(s: &mut Story, token: &DemoToken) -> Result<()> {
    for (a, b, id) in token.channels.clone() {
        let (local, remote, _, _) = crate::channel_view(s, a, id).await?;
        let r = close(s.w.node(a), &s.w.chains[0].link(), id).await?;
        s.w.pay_gas(0, &r);
        let paid = ContractViewOf(s, 0).channel(id).await?;
        println!(
            "  chain A: USDC {a} ⇄ {b} closed by {a}: pays {a} {}, {b} {}",
            token.show(paid.0),
            token.show(paid.1)
        );
        if paid != (local, remote) {
            s.failures.push(format!(
                "USDC {a} ⇄ {b} paid {paid:?}, its last off-chain state was {:?}",
                (local, remote)
            ));
        }
    }
    Ok(())
}

/// Every holder's on-chain USDC equals what it was minted plus its net token transfers; the
/// contract holds none; nothing was created or lost.
pub(crate) async fn final_check(s: &mut Story, token: &DemoToken) -> Result<()> {
    let c = &s.w.chains[0];
    println!("  {:6} {:>16} {:>16}", "node", "on-chain USDC", "net transfers");
    let (mut minted, mut held) = (0u128, 0u128);
    for name in ["user1", "i1", "i2", "user2"] {
        let who = s.w.node(name).address;
        let start = token.minted.get(&who).copied().unwrap_or(0);
        let onchain = token_balance(&c.chain, token.address, who).await?.0;
        let net = token.ledger.get(&who).copied().unwrap_or(0);
        let whole = |v: u128| crate::world::units_of(v, USDC);
        let signed = if net < 0 {
            format!("-{}", whole(net.unsigned_abs()))
        } else {
            format!("+{}", whole(net as u128))
        };
        println!("  {name:6} {:>16} {signed:>16}", whole(onchain));
        if onchain as i128 != start as i128 + net {
            s.failures.push(format!(
                "{name}: {onchain} USDC base units on-chain, expected minted + transfers = {}",
                start as i128 + net
            ));
        }
        minted += start;
        held += onchain;
    }
    let locked = token_balance(&c.chain, token.address, c.contract).await?.0;
    if locked != 0 {
        s.failures.push(format!(
            "the contract still holds {} after every token channel closed",
            token.show(locked)
        ));
    }
    println!(
        "  chain A: minted {} = final balances {}; the contract holds {} USDC after every close",
        token.show(minted),
        token.show(held),
        crate::world::units_of(locked, USDC)
    );
    if minted != held + locked {
        s.failures.push(format!("USDC not conserved ({minted} minted, {held} held, {locked} locked)"));
    }
    Ok(())
}
