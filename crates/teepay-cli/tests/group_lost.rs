//! The whole hub group lost mid-swap (issue 15, DESIGN §10), every party an OS process: three
//! `teepay hub` replicas, three `teepay node` daemons (u1, mid, u2) and two anvil chains that
//! mine a block every second. u2 reaches the group through proxies that hold what the hub sends
//! it for 1.5 s, so the test can kill every replica (and drop what the proxies still hold)
//! at a moment it chooses:
//! - after u1 and mid have the swap's CONFIRM and u2 has not: past the locks' deadline u2's
//!   `channel close` claims REVERT, mid's watcher answers with the hub's certificate within the
//!   challenge window, u2's enclave takes it from the chain, and every channel closes with the
//!   swap applied on both chains;
//! - before any COMMIT: no certificate exists, the claims become final after the window and
//!   every channel closes with the swap reverted on both chains.
//!
//! Each run ends by reading every `ChannelClosed` from both contracts: each channel paid
//! exactly one outcome, the same on both chains, and both contracts hold nothing.

mod common;

use common::group::{GroupNet, NetChannel, NetOptions};
use common::{ETH, cli, log_tails, ok, wait_until};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use teepay_chain::contract::{ContractEvent, events};
use teepay_chain::{Chain, RpcChain};
use teepay_types::Address;

const HOLD: Duration = Duration::from_millis(1500);
const GIVE_A: u128 = ETH / 20;
const GIVE_B: u128 = ETH / 25;

/// The net with u2 behind slow proxies, swap locks' deadline 4 s after a swap's own (6 s),
/// and a 3 s challenge window; chains mine a block every second.
struct Net(GroupNet);

impl std::ops::Deref for Net {
    type Target = GroupNet;
    fn deref(&self) -> &GroupNet {
        &self.0
    }
}

impl std::ops::DerefMut for Net {
    fn deref_mut(&mut self) -> &mut GroupNet {
        &mut self.0
    }
}

impl Net {
    fn start(tag: &str) -> Net {
        Net(GroupNet::start(
            &format!("lost-{tag}"),
            NetOptions {
                anvil: &["--block-time", "1"],
                deploy: &["--challenge-window", "3"],
                hub_extra: "swap_lock_time_ms = 4000\n",
                prepare_timeout_ms: 6000,
                slow_u2: Some(HOLD),
            },
        ))
    }

    fn api(&self, node: usize) -> &str {
        &self.nodes[node].1
    }

    fn locks(&self, node: usize) -> u64 {
        ok(&["channel", "list", "--node", self.api(node)])["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["locks"].as_u64().unwrap())
            .sum()
    }

    /// u1 gives GIVE_A on chain A for u2's GIVE_B on chain B.
    fn swap_once(&self) -> std::thread::JoinHandle<Result<serde_json::Value, String>> {
        self.swap(GIVE_A, GIVE_B)
    }

    /// Every replica killed (SIGKILL), and whatever u2's proxies still hold is dropped.
    fn lose_the_group(&mut self) {
        for p in &self.slow {
            p.set_cut(true);
        }
        for r in &mut self.group.replicas {
            r.proc = None;
        }
    }

    /// Closes `channel` through the nodes in `by`, in turn, until one succeeds.
    fn close_by(&self, channel: &NetChannel, by: &[usize], limit: Duration) {
        let start = Instant::now();
        loop {
            for &node in by {
                match cli(&["channel", "close", "--channel", &channel.id, "--node", self.api(node)]) {
                    Ok(_) => return,
                    Err(e) if e.contains("is closed") => return,
                    Err(e) => {
                        assert!(
                            start.elapsed() < limit,
                            "channel {} did not close in {limit:?}: {e}{}",
                            channel.id,
                            log_tails(&self.dir)
                        );
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every channel's payouts from the contracts: (opener's, peer's) by channel id; also
    /// checks that both contracts hold nothing.
    fn payouts(&self) -> BTreeMap<String, (u128, u128)> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut out = BTreeMap::new();
            for (rpc, contract, block) in &self.group.chains {
                let chain = RpcChain::connect(rpc).unwrap();
                let contract = Address::from_hex(contract).expect("contract address");
                let head = chain.block_number().await.unwrap();
                for logged in events(&chain, contract, *block, head).await.unwrap() {
                    if let ContractEvent::ChannelClosed { channel, payout_a, payout_b, .. } = logged.event {
                        out.insert(channel.to_string(), (payout_a.0, payout_b.0));
                    }
                }
                assert_eq!(
                    chain.balance(contract).await.unwrap().0,
                    0,
                    "the contract on {rpc} holds nothing"
                );
            }
            out
        })
    }

    /// Each channel paid the swap's one outcome: `applied` moved GIVE_A along chain A
    /// (u1 → mid → u2) and GIVE_B along chain B (u2 → mid → u1), or nothing moved.
    fn assert_swap_ended(&self, applied: bool) {
        let paid = self.payouts();
        assert_eq!(paid.len(), 4, "every channel closed: {paid:?}");
        for c in &self.channels {
            let moved = if applied { [GIVE_A, GIVE_B][c.chain] } else { 0 };
            let key = paid
                .keys()
                .find(|k| k.to_lowercase().contains(&c.id.trim_start_matches("0x").to_lowercase()));
            let (opener, peer) = paid[key.unwrap_or_else(|| panic!("no close of {} in {paid:?}", c.id))];
            assert_eq!((opener, peer), (ETH - moved, ETH + moved), "channel {} (applied: {applied})", c.id);
        }
    }
}

#[test]
fn a_confirm_that_reached_only_some_nodes_settles_both_chains_without_the_group() {
    let mut net = Net::start("confirm");
    let _accept = net.swap_once();
    // u1 holds its locks from PREPARE until CONFIRM; u2's CONFIRM is 1.5 s behind.
    wait_until("u1 to lock the swap", Duration::from_secs(20), || net.locks(0) > 0);
    // mid (the certificate holder that will answer the claim) got it in the same flush.
    wait_until("the CONFIRM to reach u1 and mid", Duration::from_secs(20), || {
        net.locks(0) == 0 && net.locks(1) == 0
    });
    net.lose_the_group();
    assert!(net.locks(2) > 0, "u2 never got the decision: its swap locks stand");

    // u2 wants back what it gives on chain B: past the deadline it claims REVERT; mid's
    // watcher posts the hub's certificate in the window, and u2 closes with it.
    let limit = Duration::from_secs(60);
    net.close_by(&net.channels[2], &[2], limit);
    wait_until("u2's enclave to take the certificate from the chain", Duration::from_secs(20), || {
        net.locks(2) == 0
    });
    for c in [&net.channels[0], &net.channels[1], &net.channels[3]] {
        net.close_by(c, &[c.opener, c.peer], limit);
    }
    net.assert_swap_ended(true);
}

#[test]
fn with_no_certificate_the_deadline_path_reverts_the_swap_on_both_chains() {
    let mut net = Net::start("revert");
    let _accept = net.swap_once();
    // Lost while u2's PREPARE is still held: nobody committed, no certificate exists.
    wait_until("u1 to lock the swap", Duration::from_secs(20), || net.locks(0) > 0);
    net.lose_the_group();
    assert_eq!(net.locks(2), 0, "u2 never saw the swap");
    let limit = Duration::from_secs(60);
    for c in &net.channels {
        net.close_by(c, &[c.opener, c.peer], limit);
    }
    net.assert_swap_ended(false);
}
