//! `teepay demo`: the whole system on one machine, narrated — two chains, a hub, six nodes
//! (users 1 and 2 with an address on each chain, four intermediaries, as in the
//! cross-chain seed's figure 1). It ends by checking conservation and atomicity from
//! on-chain data and exits non-zero if anything does not hold.

pub mod dev;
mod group;
mod tokens;
mod world;

use anyhow::{Context, Result, bail, ensure};
use group::{DemoHub, REPLICAS};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use teepay_chain::Chain;
use teepay_enclave::{Request, Response};
use teepay_link::wire::WireStatus;
use teepay_node::onchain::{close, fund, open_channel};
use teepay_types::{Address, Amount, ChainId, ChannelId, InstanceId, PaymentReceipt, SignedOrder, Transfer};
pub use world::wait_ready;
use world::{ETHER, World, eth, wait_final};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Two JSON-RPC URLs (comma-separated) to run against real nodes such as anvil instead
    /// of two embedded chains. Their chain ids must differ; dev accounts 0–6 must be funded.
    #[arg(long, value_delimiter = ',', value_name = "URL1,URL2")]
    chain_rpc: Option<Vec<String>>,
    /// Keep the demo's working directory (hub DB, sealed states) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// Net transfers of succeeded instances, per (chain, node): what on-chain balances must show.
type Ledger = BTreeMap<(ChainId, Address), i128>;

struct Story {
    w: World,
    ledger: Ledger,
    /// Channels by (chain index, party names).
    channels: Vec<(usize, &'static str, &'static str, ChannelId)>,
    failures: Vec<String>,
}

pub fn run(args: &DemoArgs) -> Result<std::process::ExitCode> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("teepay-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(story(args, &dir));
    // Every service task stops before their files go.
    rt.shutdown_timeout(Duration::from_secs(5));
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("working directory kept: {}", dir.display());
    }
    let failures = result?;
    println!();
    if failures.is_empty() {
        println!("✔ all checks passed in {:.1} s", started.elapsed().as_secs_f64());
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        for f in &failures {
            println!("✘ {f}");
        }
        Ok(std::process::ExitCode::FAILURE)
    }
}

fn step(title: &str) {
    println!("\n== {title}");
}

async fn story(args: &DemoArgs, dir: &std::path::Path) -> Result<Vec<String>> {
    if let Some(urls) = &args.chain_rpc {
        ensure!(urls.len() == 2, "--chain-rpc takes exactly two URLs, comma-separated (got {})", urls.len());
    }
    step("Setting up");
    let chains = world::chains(args.chain_rpc.as_deref()).await?;
    for c in &chains {
        println!(
            "  {} (chain id {}) at {}: PaymentChannels deployed at {}",
            c.name,
            c.id.0,
            c.chain.describe(),
            c.contract
        );
    }
    let hub = DemoHub::start(dir, &chains).await?;
    let (first, standby) = hub.links();
    println!(
        "  hub group of {REPLICAS} replicas (one Raft group; each flush committed on a majority before it leaves): \
         identity {}, replica {} leads; nodes know every replica's link ({first}, {})",
        hub.enclave(),
        hub.leader().map_or(0, |i| i + 1),
        standby.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
    );
    let w = World {
        dir: dir.to_path_buf(),
        chains,
        hub,
        nodes: Vec::new(),
        gas: BTreeMap::new(),
        funded: BTreeMap::new(),
    };
    let mut s = Story { w, ledger: Ledger::new(), channels: Vec::new(), failures: Vec::new() };
    for (i, name) in ["user1", "user2", "i1", "i2", "i3", "i4"].into_iter().enumerate() {
        let a = s.w.add_node(name, i + 1).await?;
        println!(
            "  {name:5} enclave {a}: funded with 10 ETH on each chain, registered on both contracts, admitted by the hub"
        );
    }

    // Chain A: user1 — i1 — i2 — user2; chain B: user2 — i3 — i4 — user1.
    let topology = [
        (0, "user1", "i1"),
        (0, "i1", "i2"),
        (0, "i2", "user2"),
        (1, "user2", "i3"),
        (1, "i3", "i4"),
        (1, "i4", "user1"),
    ];
    for (ci, a, b) in topology {
        let deposit = Amount(2 * ETHER);
        let link = s.w.chains[ci].link();
        let (id, r) = open_channel(s.w.node(a), &link, s.w.node(b).address, deposit)
            .await
            .with_context(|| format!("{a} opens to {b}"))?;
        s.w.pay_gas(ci, &r);
        // The peer's watcher adds the channel to its enclave from the ChannelOpened event.
        s.w.settle_sync().await?;
        let r = fund(s.w.node(b), &link, id, deposit).await.with_context(|| format!("{b} funds"))?;
        s.w.pay_gas(ci, &r);
        println!(
            "  {}: channel {a} ⇄ {b} opened by {a} and funded by {b}, 2 ETH each side",
            s.w.chains[ci].name
        );
        s.channels.push((ci, a, b, id));
    }
    let t = Instant::now();
    s.w.settle_sync().await?;
    let map = s.w.hub.control().await?.network().await;
    let count: usize = map.iter().map(|(_, chans)| chans.len()).sum();
    println!(
        "  hub synced both chains from contract events: {count} channels in its map ({:.0} ms)",
        t.elapsed().as_secs_f64() * 1e3
    );

    multi_hop(&mut s).await?;
    invoice_paid(&mut s).await?;
    let mut token = tokens::setup(&mut s).await?;
    tokens::invoice(&mut s, &mut token).await?;
    tokens::swap_for_ether(&mut s, &mut token).await?;
    two_party_swap(&mut s).await?;
    four_party_swap(&mut s).await?;
    refunded_swap(&mut s).await?;
    leader_lost_mid_swap(&mut s).await?;
    eject_mid_payment(&mut s).await?;
    cooperative_closes(&mut s).await?;
    tokens::close_all(&mut s, &token).await?;
    s.w.settle_sync().await?;
    final_check(&mut s).await?;
    tokens::final_check(&mut s, &token).await?;
    Ok(s.failures)
}

async fn settle(
    s: &mut Story,
    payer: &str,
    id: InstanceId,
    what: &str,
    started: Instant,
) -> Result<WireStatus> {
    let st = wait_final(s.w.node(payer), id, Duration::from_secs(20)).await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match &st {
        WireStatus::Succeeded => println!("  ✔ {what}: succeeded in {ms:.1} ms (instance {id})"),
        WireStatus::Refunded(why) => println!("  ↺ {what}: refunded after {ms:.1} ms — {why}"),
        other => println!("  ? {what}: {other:?}"),
    }
    Ok(st)
}

fn book(s: &mut Story, chain: ChainId, from: Address, to: Address, amount: u128) {
    *s.ledger.entry((chain, from)).or_default() -= amount as i128;
    *s.ledger.entry((chain, to)).or_default() += amount as i128;
}

async fn multi_hop(s: &mut Story) -> Result<()> {
    step("1. Multi-hop payment: user1 pays user2 0.25 ETH on chain A (user1 → i1 → i2 → user2)");
    let (chain, payee) = (s.w.chains[0].id, s.w.node("user2").address);
    let t = Instant::now();
    let id = s.w.node("user1").pay(chain, payee, Amount(ETHER / 4), Amount(0)).await?;
    if settle(s, "user1", id, "payment", t).await? == WireStatus::Succeeded {
        book(s, chain, s.w.node("user1").address, payee, ETHER / 4);
    } else {
        s.failures.push("the multi-hop payment did not succeed".into());
    }
    Ok(())
}

async fn invoice_paid(s: &mut Story) -> Result<()> {
    step("2. An invoice: user2 (a shop) asks for 0.15 ETH on chain A; user1 pays it once and gets a receipt");
    let (chain, shop) = (s.w.chains[0].id, s.w.node("user2").address);
    let after = s.w.node("user2").events.as_ref().map_or(0, |log| log.last_seq());
    let request = Request::CreateInvoice {
        chain,
        asset: teepay_types::Asset::Native,
        amount: Some(Amount(ETHER * 15 / 100)),
        memo_hash: teepay_types::keccak256(b"order #42"),
        expires_at: teepay_link::host::now_ms() + 600_000,
    };
    let Response::Invoice(invoice) = s.w.node("user2").enclave(request).await? else {
        bail!("unexpected enclave response")
    };
    let printed = invoice.encode();
    println!("  user2's enclave signed the invoice: {}…{}", &printed[..24], &printed[printed.len() - 8..]);
    let t = Instant::now();
    let id = s.w.node("user1").pay_invoice(invoice.clone(), None, Amount(0)).await?;
    if settle(s, "user1", id, "invoice payment", t).await? != WireStatus::Succeeded {
        s.failures.push("the invoice payment did not succeed".into());
        return Ok(());
    }
    book(s, chain, s.w.node("user1").address, shop, ETHER * 15 / 100);
    // The receipt travels user2 → hub → user1, whose enclave keeps it.
    match kept_receipt(s, "user1", invoice.invoice.id()).await {
        Some(r) if r.proves_payment_of(&invoice) => println!(
            "  ✔ user1 holds user2's receipt ({}…): it proves to anyone that user1 paid this invoice",
            &r.encode()[..24]
        ),
        _ => s.failures.push("user1 holds no receipt proving the invoice payment".into()),
    }
    let again = s.w.node("user1").pay_invoice(invoice, None, Amount(0)).await;
    match again {
        Err(e) => println!("  ✔ paying it again is refused: {e}"),
        Ok(id) => s.failures.push(format!("a paid invoice was paid again ({id})")),
    }
    // What the shop's backend hears (its stream, or its webhook).
    if let Some(log) = &s.w.node("user2").events {
        let mut sub = log.subscribe(after).map_err(anyhow::Error::msg)?;
        println!("  user2's invoice events (`teepay watch invoices`):");
        while sub.cursor() < log.last_seq() {
            let e = sub.next().await.map_err(anyhow::Error::msg)?;
            if e.kind.starts_with("invoice.") {
                println!("    {:>4}  {}", e.seq, e.kind);
            }
        }
    }
    Ok(())
}

/// The payee's receipt for `invoice` once it has reached `payer`'s enclave (up to 2 s).
async fn kept_receipt(s: &Story, payer: &str, invoice: teepay_types::Hash32) -> Option<PaymentReceipt> {
    for _ in 0..200 {
        let request = Request::PaidInvoice { invoice };
        if let Ok(Response::PaidInvoice(paid)) = s.w.node(payer).enclave(request).await
            && let Some(r) = paid.receipt
        {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

async fn intent(
    s: &Story,
    party: &str,
    gives: &[(usize, &str, u128)],
    receives: &[(usize, &str, u128)],
) -> Result<SignedOrder> {
    let t = |(ci, who, amount): &(usize, &str, u128)| Transfer {
        chain: s.w.chains[*ci].id,
        asset: teepay_types::Asset::Native,
        counterparty: s.w.node(who).address,
        amount: Amount(*amount),
        max_fee: Amount(0),
    };
    let expires_at = teepay_link::host::now_ms() + 60_000;
    let req = Request::CreateSwapIntent {
        gives: gives.iter().map(t).collect(),
        receives: receives.iter().map(t).collect(),
        expires_at,
    };
    match s.w.node(party).enclave(req).await? {
        Response::Order(o) => Ok(o),
        _ => bail!("unexpected enclave response"),
    }
}

/// Runs a swap from the parties' intents; books its transfers if it succeeded.
async fn swap(
    s: &mut Story,
    what: &str,
    gives: &[(&'static str, usize, &'static str, u128)],
) -> Result<WireStatus> {
    let (id, t) = start_swap(s, gives).await?;
    finish_swap(s, what, gives, id, t).await
}

/// Every party's intent, submitted by the first giver; returns the instance once accepted.
async fn start_swap(
    s: &mut Story,
    gives: &[(&'static str, usize, &'static str, u128)],
) -> Result<(InstanceId, Instant)> {
    let mut parties: Vec<&str> = gives.iter().flat_map(|g| [g.0, g.2]).collect();
    parties.sort();
    parties.dedup();
    let mut intents = Vec::new();
    for p in &parties {
        let g: Vec<_> = gives.iter().filter(|x| x.0 == *p).map(|x| (x.1, x.2, x.3)).collect();
        let r: Vec<_> = gives.iter().filter(|x| x.2 == *p).map(|x| (x.1, x.0, x.3)).collect();
        intents.push(intent(s, p, &g, &r).await?);
    }
    let t = Instant::now();
    let id = s.w.node(gives[0].0).swap(intents).await?;
    Ok((id, t))
}

/// Waits for a started swap's outcome and books its transfers if it succeeded.
async fn finish_swap(
    s: &mut Story,
    what: &str,
    gives: &[(&'static str, usize, &'static str, u128)],
    id: InstanceId,
    t: Instant,
) -> Result<WireStatus> {
    let st = settle(s, gives[0].0, id, what, t).await?;
    if st == WireStatus::Succeeded {
        for (from, ci, to, amount) in gives {
            let (chain, f, t) = (s.w.chains[*ci].id, s.w.node(from).address, s.w.node(to).address);
            book(s, chain, f, t, *amount);
        }
    }
    Ok(st)
}

async fn two_party_swap(s: &mut Story) -> Result<()> {
    step("5. Cross-chain swap: user1 gives 0.5 ETH on chain A for user2's 0.4 ETH on chain B");
    let st =
        swap(s, "2-party swap", &[("user1", 0, "user2", ETHER / 2), ("user2", 1, "user1", 2 * ETHER / 5)])
            .await?;
    if st != WireStatus::Succeeded {
        s.failures.push("the 2-party swap did not succeed".into());
    }
    Ok(())
}

async fn four_party_swap(s: &mut Story) -> Result<()> {
    step("6. Four-party swap across both chains: user1 →A i2 →A user2 →B i4 →B user1, all or nothing");
    let gives = [
        ("user1", 0, "i2", ETHER / 10),
        ("i2", 0, "user2", ETHER / 5),
        ("user2", 1, "i4", 3 * ETHER / 10),
        ("i4", 1, "user1", ETHER / 20),
    ];
    let st = swap(s, "4-party swap", &gives).await?;
    if st != WireStatus::Succeeded {
        s.failures.push("the 4-party swap did not succeed".into());
    }
    Ok(())
}

async fn refunded_swap(s: &mut Story) -> Result<()> {
    step("7. A swap whose route on chain B runs through i3, which stops answering");
    let i3 = s.w.index("i3");
    s.w.stop_node(i3);
    println!("  i3's daemon is killed (its sealed state stays on disk)");
    let st = swap(s, "swap", &[("user1", 0, "user2", ETHER / 10), ("user2", 1, "user1", ETHER / 10)]).await?;
    if !matches!(st, WireStatus::Refunded(_)) {
        s.failures.push(format!("the swap through a silent node should be refunded, got {st:?}"));
    }
    s.w.restart_node(i3).await?;
    println!("  i3 restarted from its sealed state and reconnected");
    Ok(())
}

async fn leader_lost_mid_swap(s: &mut Story) -> Result<()> {
    step(
        "8. The hub's leader is lost in the middle of a swap: user1 gives 0.1 ETH on chain A for user2's 0.08 ETH on chain B",
    );
    let Some(leader) = s.w.hub.leader() else {
        s.failures.push("no hub replica leads before the failover chapter".into());
        return Ok(());
    };
    let gives = [("user1", 0, "user2", ETHER / 10), ("user2", 1, "user1", 2 * ETHER / 25)];
    let (id, t) = start_swap(s, &gives).await?;
    s.w.hub.kill(leader).await;
    let killed = Instant::now();
    println!("  swap {id} accepted; replica {} (the leader) is killed at once", leader + 1);
    s.w.hub.control().await?;
    let next = s.w.hub.leader().map_or(0, |i| i + 1);
    println!(
        "  replica {next} leads {:.0} ms later: it forks its enclave's copy of every committed flush and resumes",
        killed.elapsed().as_secs_f64() * 1e3
    );
    let st = finish_swap(s, "swap across the failover", &gives, id, t).await?;
    if st != WireStatus::Succeeded {
        s.failures.push(format!(
            "the swap caught by the leader's loss should complete under the next leader, got {st:?}"
        ));
    }
    s.w.hub.restart(leader).await?;
    println!("  replica {} restarted from its own files and follows replica {next}", leader + 1);
    Ok(())
}

async fn channel_view(s: &Story, who: &str, id: ChannelId) -> Result<(u128, u128, usize, bool)> {
    let c =
        s.w.node(who)
            .channels()
            .await?
            .into_iter()
            .find(|c| c.id == id)
            .context("channel unknown to its party")?;
    Ok((c.local.0, c.remote.0, c.locks, c.open))
}

fn channel_id(s: &Story, a: &str, b: &str) -> (usize, ChannelId) {
    let (ci, _, _, id) = s.channels.iter().find(|(_, x, y, _)| (*x, *y) == (a, b)).expect("known channel");
    (*ci, *id)
}

async fn eject_mid_payment(s: &mut Story) -> Result<()> {
    step(
        "9. Eject in the middle of a multi-hop payment: user1 pays user2 0.2 ETH on chain A while user2 is down; i1 ejects its channel to i2",
    );
    let u2 = s.w.index("user2");
    let (_, c1) = channel_id(s, "user1", "i1");
    let (ci, c2) = channel_id(s, "i1", "i2");
    let (_, c3) = channel_id(s, "i2", "user2");
    let before = [
        channel_view(s, "user1", c1).await?,
        channel_view(s, "i1", c2).await?,
        channel_view(s, "i2", c3).await?,
    ];
    s.w.stop_node(u2);
    let (chain, payee) = (s.w.chains[0].id, s.w.node("user2").address);
    let t = Instant::now();
    let id = s.w.node("user1").pay(chain, payee, Amount(ETHER / 5), Amount(0)).await?;
    // Wait until i1 holds the payment's lock (PREPARED), then eject.
    let deadline = Instant::now() + Duration::from_secs(5);
    while channel_view(s, "i1", c2).await?.2 == 0 {
        ensure!(Instant::now() < deadline, "i1 never prepared the payment");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!("  i1 and i2 hold the payment's locks; user2 never answered PREPARE");
    let r = close(s.w.node("i1"), &s.w.chains[ci].link(), c2).await?;
    s.w.pay_gas(ci, &r);
    println!(
        "  i1 ejected channel i1 ⇄ i2 on chain A (block {}, gas {}): the contract fixed the payment's outcome",
        r.block_number, r.gas_used
    );
    let st = settle(s, "user1", id, "payment", t).await?;
    if !matches!(&st, WireStatus::Refunded(why) if why.contains("eject")) {
        s.failures.push(format!("the ejected payment should be reverted on-chain, got {st:?}"));
    }
    s.w.restart_node(u2).await?;
    s.w.settle_sync().await?;
    // Every channel of the payment agrees: nothing moved anywhere.
    tokio::time::sleep(Duration::from_millis(300)).await; // RESOLVE reaches the restarted user2
    let after = [channel_view(s, "user1", c1).await?, channel_view(s, "i2", c3).await?];
    let view = ContractViewOf(s, ci);
    let onchain = view.channel(c2).await?;
    println!(
        "  on-chain payout of i1 ⇄ i2: i1 {} ETH, i2 {} ETH; user1 ⇄ i1 and i2 ⇄ user2 unchanged off-chain, no locks left",
        eth(onchain.0),
        eth(onchain.1)
    );
    if (after[0].0, after[0].2) != (before[0].0, 0) || (after[1].0, after[1].2) != (before[2].0, 0) {
        s.failures
            .push(format!("channels of the ejected payment changed: before {before:?}, after {after:?}"));
    }
    if onchain != (before[1].0, before[1].1) {
        s.failures
            .push(format!("ejected channel paid {onchain:?}, expected {:?}", (before[1].0, before[1].1)));
    }
    s.channels.retain(|(_, _, _, id)| *id != c2);
    Ok(())
}

/// Payouts of a closed channel from its `ChannelClosed` event, as (a, b).
struct ContractViewOf<'a>(&'a Story, usize);

impl ContractViewOf<'_> {
    async fn channel(&self, id: ChannelId) -> Result<(u128, u128)> {
        let c = &self.0.w.chains[self.1];
        let head = c.chain.block_number().await?;
        for e in teepay_chain::contract::events(&c.chain, c.contract, c.from_block, head).await? {
            if let teepay_chain::contract::ContractEvent::ChannelClosed {
                channel, payout_a, payout_b, ..
            } = e.event
                && channel == id
            {
                return Ok((payout_a.0, payout_b.0));
            }
        }
        bail!("channel {id} was not closed on-chain")
    }
}

async fn cooperative_closes(s: &mut Story) -> Result<()> {
    step("10. Cooperative closes of every remaining channel");
    for (ci, a, b, id) in s.channels.clone() {
        let (local, remote, _, _) = channel_view(s, a, id).await?;
        let r = close(s.w.node(a), &s.w.chains[ci].link(), id).await?;
        s.w.pay_gas(ci, &r);
        let paid = ContractViewOf(s, ci).channel(id).await?;
        println!(
            "  {}: {a} ⇄ {b} closed by {a}: pays {a} {} ETH, {b} {} ETH",
            s.w.chains[ci].name,
            eth(paid.0),
            eth(paid.1)
        );
        if paid != (local, remote) {
            s.failures
                .push(format!("{a} ⇄ {b} paid {paid:?}, its last off-chain state was {:?}", (local, remote)));
        }
    }
    s.w.settle_sync().await?;
    Ok(())
}

async fn final_check(s: &mut Story) -> Result<()> {
    step("Final balances (on-chain account of each enclave; off-chain = open channel balances)");
    println!(
        "  {:6} {:>8} {:>14} {:>10} {:>14} {:>14}",
        "node", "chain", "on-chain ETH", "off-chain", "gas paid", "net transfers"
    );
    let mut total_in = [0u128; 2];
    let mut total_out = [0u128; 2];
    for ci in 0..2 {
        let c = &s.w.chains[ci];
        let locked = c.chain.balance(c.contract).await?;
        if locked.0 != 0 {
            s.failures
                .push(format!("{} contract still holds {} wei after every channel closed", c.name, locked.0));
        }
        for n in &s.w.nodes {
            let a = n.handle.address;
            let onchain = c.chain.balance(a).await?.0;
            let offchain: u128 = n
                .handle
                .channels()
                .await?
                .iter()
                .filter(|ch| ch.open && ch.chain == c.id)
                .map(|ch| ch.local.0)
                .sum();
            let gas = s.w.gas.get(&(c.id, a)).copied().unwrap_or(0);
            let net = s.ledger.get(&(c.id, a)).copied().unwrap_or(0);
            let funded = s.w.funded[&(c.id, a)];
            println!(
                "  {:6} {:>8} {:>14} {:>10} {:>14} {:>14}",
                n.name,
                c.id.0,
                eth(onchain),
                eth(offchain),
                eth(gas),
                signed_eth(net)
            );
            let expected = (funded as i128) - (gas as i128) + net;
            if onchain as i128 != expected {
                s.failures.push(format!(
                    "{} on {}: on-chain {onchain} wei, expected funding − gas + transfers = {expected}",
                    n.name, c.name
                ));
            }
            total_in[ci] += funded;
            total_out[ci] += onchain + gas;
        }
    }
    for ci in 0..2 {
        println!(
            "  {}: funded {} ETH = final balances + gas {} ETH",
            s.w.chains[ci].name,
            eth(total_in[ci]),
            eth(total_out[ci])
        );
        if total_in[ci] != total_out[ci] {
            s.failures.push(format!(
                "{}: value not conserved ({} in, {} out)",
                s.w.chains[ci].name, total_in[ci], total_out[ci]
            ));
        }
    }
    println!(
        "  conservation: nothing created or lost on either chain; atomicity: every party's balance equals"
    );
    println!(
        "  funding − gas + the transfers of succeeded payments/swaps (refunded and ejected ones moved nothing)"
    );
    Ok(())
}

fn signed_eth(v: i128) -> String {
    if v < 0 { format!("-{}", eth(v.unsigned_abs())) } else { format!("+{}", eth(v as u128)) }
}
