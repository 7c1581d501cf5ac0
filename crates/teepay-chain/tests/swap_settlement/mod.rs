//! Swap locks settled without the hub (DESIGN §10), on every backend of the suite: a decision
//! certificate recorded by anyone closes them; with none, a REVERT claimed after the lock's
//! deadline becomes final once its challenge window passes, unless the hub's CONFIRM
//! certificate is posted within it.

use super::*;
use std::time::{Duration, Instant};
use teepay_types::{DecisionCertificate, Outcome, claim_revert_call, record_decision_call};

/// Long enough that a close sent right after a claim lands inside the window on any backend.
const WINDOW_SECS: u64 = 6;

fn swap_lock(instance: InstanceId, amount: u128, hub: Address, deadline: u64) -> LockState {
    LockState { kind: InstanceKind::CrossChain, hub, deadline, ..lock(instance, amount, Phase::Committed) }
}

async fn record<C: Chain>(
    l: &mut Ledger<'_, C>,
    d: &Deployment,
    cert: &DecisionCertificate,
) -> Result<Receipt, String> {
    l.send("recordDecision", &dev_key(3), Some(d.address), 0, record_decision_call(cert)).await
}

async fn claim<C: Chain>(
    l: &mut Ledger<'_, C>,
    d: &Deployment,
    signed: &teepay_types::SignedChannelState,
) -> Result<Receipt, String> {
    l.send("claimRevert", &dev_key(3), Some(d.address), 0, claim_revert_call(signed)).await
}

/// Both parties' balances after `f`, minus what they had before.
async fn payouts<C: Chain>(
    l: &Ledger<'_, C>,
    a: &SigningKey,
    b: &SigningKey,
    before: (u128, u128),
) -> (u128, u128) {
    (l.balance(a.address()).await - before.0, l.balance(b.address()).await - before.1)
}

pub(crate) async fn scenario<C: Chain>(l: &mut Ledger<'_, C>) {
    let d = l.deploy_with_window(WINDOW_SECS).await;
    let hub = SigningKey::from_entropy([0x70; 32]).unwrap();
    let impostor = SigningKey::from_entropy([0x71; 32]).unwrap();
    let (a, b) = (raw_party(l, &d, 50).await, raw_party(l, &d, 51).await);
    let dep = ETHER / 100;
    let amt = ETHER / 1000;
    let far = u64::MAX / 2;

    // 1. A certificate recorded by anyone settles the swap lock; only the named hub's counts.
    let x = InstanceId([0x81; 32]);
    let ch1 = open_raw(l, &d, &a, &b, dep, 0).await;
    let s1 =
        state(l.chain_id, &d, ch1, 4, (dep, 0), dep, 0, vec![swap_lock(x, amt, hub.address(), far)]).sign(&a);
    assert_eq!(close_with(l, &d, &s1).await.unwrap_err(), "SwapLocked", "undecided swap lock");
    assert_eq!(claim(l, &d, &s1).await.unwrap_err(), "NothingToClaim", "the lock's deadline is far off");
    let mut forged = DecisionCertificate::sign(&impostor, x, Outcome::Revert);
    forged.hub = hub.address();
    assert_eq!(record(l, &d, &forged).await.unwrap_err(), "BadSignature", "another key naming the hub");
    record(l, &d, &DecisionCertificate::sign(&impostor, x, Outcome::Revert))
        .await
        .expect("anyone may record their own key's word");
    assert_eq!(
        close_with(l, &d, &s1).await.unwrap_err(),
        "SwapLocked",
        "a certificate of a key the lock does not name decides nothing for it"
    );
    let view = teepay_chain::contract::ContractView { chain: l.chain, address: d.address };
    assert_eq!(view.recorded_decision(hub.address(), x).await.unwrap(), None);
    let confirm = DecisionCertificate::sign(&hub, x, Outcome::Apply);
    let r = record(l, &d, &confirm).await.expect("the hub's CONFIRM");
    assert_eq!(events_of(&r), vec![ContractEvent::DecisionRecorded { certificate: confirm.clone() }]);
    assert_eq!(view.recorded_decision(hub.address(), x).await.unwrap(), Some(true));
    let r = record(l, &d, &confirm).await.expect("a repeat is harmless");
    assert!(events_of(&r).is_empty(), "a repeat records nothing");
    let refund = DecisionCertificate::sign(&hub, x, Outcome::Revert);
    assert_eq!(record(l, &d, &refund).await.unwrap_err(), "DecisionFinal");
    let before = (l.balance(a.address()).await, l.balance(b.address()).await);
    close_with(l, &d, &s1).await.expect("the swap lock closes with the recorded CONFIRM");
    assert_eq!(payouts(l, &a, &b, before).await, (dep - amt, amt), "the lock applied");

    // 2. No decision: after the deadline a party claims REVERT; the hub's CONFIRM certificate
    // posted within the challenge window overrides the claim.
    let y = InstanceId([0x82; 32]);
    let ch2 = open_raw(l, &d, &a, &b, dep, 0).await;
    let s2 =
        state(l.chain_id, &d, ch2, 6, (dep, 0), dep, 0, vec![swap_lock(y, amt, hub.address(), 1)]).sign(&a);
    let stranger = SigningKey::from_entropy([0x72; 32]).unwrap();
    let not_a_party = state(l.chain_id, &d, ch2, 6, (dep, 0), dep, 0, s2.state.locks.clone()).sign(&stranger);
    assert_eq!(claim(l, &d, &not_a_party).await.unwrap_err(), "NotAParty");
    let r = claim(l, &d, &s2).await.expect("claim after the deadline");
    let [ContractEvent::RevertClaimed { hub: claimed_hub, instance, final_at, channel }] = events_of(&r)[..]
    else {
        panic!("one RevertClaimed event: {:?}", events_of(&r))
    };
    assert_eq!((claimed_hub, instance, channel), (hub.address(), y, ch2));
    assert!(final_at > 0);
    assert_eq!(claim(l, &d, &s2).await.unwrap_err(), "NothingToClaim", "one claim per instance");
    assert_eq!(close_with(l, &d, &s2).await.unwrap_err(), "SwapLocked", "the claim is not final yet");
    record(l, &d, &DecisionCertificate::sign(&hub, y, Outcome::Apply))
        .await
        .expect("CONFIRM within the window");
    let before = (l.balance(a.address()).await, l.balance(b.address()).await);
    close_with(l, &d, &s2).await.expect("closes with the certificate's outcome");
    assert_eq!(payouts(l, &a, &b, before).await, (dep - amt, amt), "CONFIRM won over the claim");

    // 3. No decision and no challenge: the claim becomes final after the window; a CONFIRM
    // certificate that comes later is refused.
    let z = InstanceId([0x83; 32]);
    let ch3 = open_raw(l, &d, &a, &b, dep, 0).await;
    let s3 =
        state(l.chain_id, &d, ch3, 8, (dep, 0), dep, 0, vec![swap_lock(z, amt, hub.address(), 1)]).sign(&b);
    claim(l, &d, &s3).await.expect("claim");
    let before = (l.balance(a.address()).await, l.balance(b.address()).await);
    let started = Instant::now();
    loop {
        match close_with(l, &d, &s3).await {
            Ok(_) => break,
            Err(e) if e == "SwapLocked" && started.elapsed() < Duration::from_secs(WINDOW_SECS * 5) => {
                // Chain time moves with blocks (the embedded chain mines only on demand).
                tokio::time::sleep(Duration::from_millis(500)).await;
                let key = dev_key(3);
                l.send("empty block", &key, Some(key.address()), 0, Vec::new()).await.expect("tick");
            }
            Err(e) => panic!("close after the challenge window: {e}"),
        }
    }
    assert_eq!(payouts(l, &a, &b, before).await, (dep, 0), "the unchallenged claim reverted the lock");
    assert_eq!(
        record(l, &d, &DecisionCertificate::sign(&hub, z, Outcome::Apply)).await.unwrap_err(),
        "DecisionFinal",
        "too late: the claim is final"
    );
    assert_eq!(l.balance(d.address).await, 0, "every channel settled, nothing left in the contract");
}
