//! Differential test: the Solidity `PaymentChannels` and the Rust `ContractModel` the protocol
//! checker explores must settle identically. Random channels, then random close/eject
//! attempts (valid and invalid: wrong totals, overdrawn locks, swap locks, non-party and
//! unknown-channel signers, conflicting phases of one instance) go to both; each attempt must
//! succeed or fail in both, with the same payouts and the same newly fixed outcomes.

use teepay_chain::contract::{self, ContractEvent, ContractView, opened_channel, send_from_key};
use teepay_chain::dev::dev_key;
use teepay_chain::{ChainError, EmbeddedChain};
use teepay_sim::contract::{ContractModel, OnchainChannel};
use teepay_sim::rng::SplitMix64;
use teepay_types::{
    Address, Amount, ChainId, ChannelId, ChannelState, InstanceId, InstanceKind, LockState, Outcome, Phase,
    Report, SigningKey, close_channel_call, deposit_call, open_channel_call, register_enclave_call,
};

const CHAIN: ChainId = ChainId(777);
const MEASUREMENT: [u8; 32] = [0x5a; 32];

async fn run(seed: u64) -> (usize, usize) {
    let mut rng = SplitMix64::new(seed);
    let chain = EmbeddedChain::new(CHAIN);
    let authority = SigningKey::from_entropy([0xa1; 32]).unwrap();
    let d = contract::deploy(&chain, &dev_key(0), authority.address(), &[MEASUREMENT]).await.unwrap();
    let view = ContractView { chain: &chain, address: d.address };
    let parties: Vec<SigningKey> = (0..5)
        .map(|i| {
            SigningKey::from_entropy([seed as u8 ^ 0x40, i, 7, 7].repeat(8).try_into().unwrap()).unwrap()
        })
        .collect();
    for p in &parties {
        send_from_key(&chain, &dev_key(1), Some(p.address()), Amount(10u128.pow(18)), Vec::new())
            .await
            .unwrap();
        let q = Report::of(p, MEASUREMENT, CHAIN).attest(&authority);
        send_from_key(&chain, &dev_key(2), Some(d.address), Amount(0), register_enclave_call(&q))
            .await
            .unwrap();
    }

    let mut model = ContractModel::default();
    let mut channels: Vec<(ChannelId, usize, usize)> = Vec::new();
    for _ in 0..6 {
        let a = rng.below(5) as usize;
        let b = (a + 1 + rng.below(4) as usize) % 5;
        let (dep_a, dep_b) = (1 + rng.below(1000) as u128, rng.below(1000) as u128);
        let r = send_from_key(
            &chain,
            &parties[a],
            Some(d.address),
            Amount(dep_a),
            open_channel_call(parties[b].address(), Address::default(), Amount(dep_a)),
        )
        .await
        .unwrap();
        let id = opened_channel(&r).expect("ChannelOpened event");
        if dep_b > 0 {
            send_from_key(
                &chain,
                &parties[b],
                Some(d.address),
                Amount(dep_b),
                deposit_call(id, Amount(dep_b)),
            )
            .await
            .unwrap();
        }
        let onchain = OnchainChannel {
            chain: CHAIN,
            asset: teepay_types::Asset::Native,
            a: parties[a].address(),
            b: parties[b].address(),
            deposit_a: Amount(dep_a),
            deposit_b: Amount(dep_b),
            open: true,
        };
        model.open(id, onchain);
        channels.push((id, a, b));
    }

    let instances: Vec<InstanceId> = (0..6).map(|i| InstanceId([i as u8 + 1; 32])).collect();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..40 {
        let (id, a, b) =
            if rng.below(15) == 0 { (ChannelId([0xee; 32]), 0, 1) } else { channels[rng.below(6) as usize] };
        let (real_a, real_b) =
            model.channels.get(&id).map(|c| (c.deposit_a.0, c.deposit_b.0)).unwrap_or((60, 40));
        // Usually the deposits on-chain; sometimes a state that lags one (the rest is paid
        // back to its depositor), sometimes one above the real deposit (refused).
        let (seen_a, seen_b) = match rng.below(8) {
            0 => (real_a - rng.below(real_a as u64 + 1) as u128, real_b),
            1 => (real_a, real_b - rng.below(real_b as u64 + 1) as u128),
            2 => (real_a + 1, real_b),
            3 => (real_a, real_b + 1),
            _ => (real_a, real_b),
        };
        let total = seen_a + seen_b;
        let balance_a = rng.below(total as u64 + 1) as u128;
        let mut balance_b = total - balance_a;
        if rng.below(10) == 0 {
            balance_b += 1; // wrong total
        }
        let locks = (0..rng.below(4))
            .map(|_| LockState {
                instance: instances[rng.below(6) as usize],
                amount: Amount(rng.below(total as u64 / 2 + 2) as u128),
                a_to_b: rng.below(2) == 0,
                phase: if rng.below(2) == 0 { Phase::Prepared } else { Phase::Committed },
                kind: if rng.below(12) == 0 { InstanceKind::CrossChain } else { InstanceKind::MultiHop },
                hub: teepay_types::Address([0; 20]),
                deadline: 0,
            })
            .collect();
        let state = ChannelState {
            chain: CHAIN,
            contract: d.address,
            channel: id,
            token: Address::default(),
            version: rng.below(100),
            deposit_a: Amount(seen_a),
            deposit_b: Amount(seen_b),
            balance_a: Amount(balance_a),
            balance_b: Amount(balance_b),
            locks,
        };
        let signer = match rng.below(10) {
            0 => &parties[(a + b + 1) % 5], // maybe a non-party
            1..=4 => &parties[b],
            _ => &parties[a],
        };
        let signed = state.sign(signer);

        let expected = model.close(&signed);
        let got =
            send_from_key(&chain, &dev_key(3), Some(d.address), Amount(0), close_channel_call(&signed)).await;
        match (expected, got) {
            (Ok(settlement), Ok(receipt)) => {
                accepted += 1;
                let mut fixed = Vec::new();
                let mut payouts = None;
                for l in &receipt.logs {
                    match ContractEvent::decode(l).unwrap() {
                        Some(ContractEvent::InstanceResolved { instance, applied, .. }) => {
                            fixed.push((instance, if applied { Outcome::Apply } else { Outcome::Revert }))
                        }
                        Some(ContractEvent::ChannelClosed { payout_a, payout_b, .. }) => {
                            payouts = Some((payout_a, payout_b))
                        }
                        _ => {}
                    }
                }
                assert_eq!(
                    fixed, settlement.fixed,
                    "seed {seed}: newly fixed outcomes differ for {signed:?}"
                );
                assert_eq!(
                    payouts,
                    Some((settlement.paid_a, settlement.paid_b)),
                    "seed {seed}: payouts differ"
                );
            }
            (Err(_), Err(ChainError::Reverted { .. })) => refused += 1,
            (expected, got) => {
                panic!("seed {seed}: model says {expected:?}, contract says {got:?} for {signed:?}")
            }
        }
    }

    for i in &instances {
        let onchain = view.instance_outcome(*i).await.unwrap();
        let modelled = model.outcomes.get(i).map(|o| *o == Outcome::Apply);
        assert_eq!(onchain, modelled, "seed {seed}: recorded outcome of {i:?}");
    }
    let locked: u128 =
        model.channels.values().filter(|c| c.open).map(|c| c.deposit_a.0 + c.deposit_b.0).sum();
    assert_eq!(teepay_chain::Chain::balance(&chain, d.address).await.unwrap(), Amount(locked), "seed {seed}");
    (accepted, refused)
}

#[tokio::test]
async fn solidity_contract_settles_like_the_model() {
    let (mut accepted, mut refused) = (0, 0);
    for seed in 1..=6 {
        let (a, r) = run(seed).await;
        accepted += a;
        refused += r;
    }
    // Both kinds must actually occur, or the comparison proves little.
    assert!(accepted >= 10 && refused >= 30, "accepted {accepted}, refused {refused}");
}
