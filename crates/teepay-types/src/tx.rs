//! Ethereum transactions an enclave signs with its own key (DESIGN §3: `openChannel` is sent
//! *by the enclave's address*), and the `PaymentChannels` ABI they call.
//!
//! Only EIP-1559 (type 2) transactions are built here: a few dozen lines of RLP instead of a
//! full transaction library inside the enclave. `teepay-chain`'s tests decode what this
//! produces with alloy and recover the sender, so both sides agree byte for byte.

use crate::channel::SignedChannelState;
use crate::crypto::{SigningKey, keccak256};
use crate::decision::DecisionCertificate;
use crate::ids::{Address, Amount, ChainId, ChannelId, Hash32};
use alloy_primitives::{Address as AlloyAddress, B256, Bytes, U256};
use alloy_rlp::{Encodable, Header};
use alloy_sol_types::SolCall;
use borsh::{BorshDeserialize, BorshSerialize};

/// Bindings generated from the committed compiler artifact (see `contracts/build`).
pub mod bindings {
    alloy_sol_types::sol!(
        #[allow(missing_docs)]
        #[derive(Debug, PartialEq, Eq)]
        PaymentChannels,
        "../../contracts/out/PaymentChannels.json"
    );
    alloy_sol_types::sol!(
        #[allow(missing_docs)]
        #[derive(Debug, PartialEq, Eq)]
        TestToken,
        "../../contracts/out/TestToken.json"
    );
}

/// EIP-2718 type byte of an EIP-1559 transaction.
const EIP1559_TYPE: u8 = 2;

/// What the host supplies for a transaction: it knows the chain's nonce and fee market; the
/// enclave decides what the transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct GasParams {
    pub nonce: u64,
    pub gas_limit: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

/// An unsigned EIP-1559 call (empty access list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eip1559Tx {
    pub chain: ChainId,
    pub gas: GasParams,
    /// `None` deploys a contract with `input` as its init code.
    pub to: Option<Address>,
    pub value: Amount,
    pub input: Vec<u8>,
}

/// A signed transaction in its network encoding, ready for `eth_sendRawTransaction`.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedTx {
    pub raw: Vec<u8>,
    pub hash: Hash32,
}

impl Eip1559Tx {
    fn encode_fields(&self, out: &mut Vec<u8>) {
        self.chain.0.encode(out);
        self.gas.nonce.encode(out);
        self.gas.max_priority_fee_per_gas.encode(out);
        self.gas.max_fee_per_gas.encode(out);
        self.gas.gas_limit.encode(out);
        match self.to {
            Some(to) => AlloyAddress::from(to.0).encode(out),
            None => out.push(alloy_rlp::EMPTY_STRING_CODE),
        }
        self.value.0.encode(out);
        self.input.as_slice().encode(out);
        Header { list: true, payload_length: 0 }.encode(out); // access list
    }

    fn envelope(&self, trailer: &[u8]) -> Vec<u8> {
        let mut fields = Vec::with_capacity(self.input.len() + 160);
        self.encode_fields(&mut fields);
        fields.extend_from_slice(trailer);
        let mut out = Vec::with_capacity(fields.len() + 8);
        out.push(EIP1559_TYPE);
        Header { list: true, payload_length: fields.len() }.encode(&mut out);
        out.extend_from_slice(&fields);
        out
    }

    /// `keccak256(0x02 || rlp([chainId, nonce, …, accessList]))`.
    pub fn signing_hash(&self) -> Hash32 {
        keccak256(&self.envelope(&[]))
    }

    pub fn sign(&self, key: &SigningKey) -> SignedTx {
        let sig = key.sign_digest(&self.signing_hash()).0;
        let mut trailer = Vec::with_capacity(70);
        (sig[64] == 28).encode(&mut trailer); // y parity
        U256::from_be_slice(&sig[..32]).encode(&mut trailer);
        U256::from_be_slice(&sig[32..64]).encode(&mut trailer);
        let raw = self.envelope(&trailer);
        SignedTx { hash: keccak256(&raw), raw }
    }
}

/// Calldata of `openChannel(peer, token, amount)` (token zero: ether, sent as the value).
pub fn open_channel_call(peer: Address, token: Address, amount: Amount) -> Vec<u8> {
    bindings::PaymentChannels::openChannelCall {
        peer: AlloyAddress::from(peer.0),
        token: AlloyAddress::from(token.0),
        amount: U256::from(amount.0),
    }
    .abi_encode()
}

/// Calldata of `withdraw(token)`: token payouts a close could not transfer.
pub fn withdraw_owed_call(token: Address) -> Vec<u8> {
    bindings::PaymentChannels::withdrawCall { token: AlloyAddress::from(token.0) }.abi_encode()
}

/// Calldata of an ERC-20 `approve(spender, amount)`.
pub fn approve_call(spender: Address, amount: Amount) -> Vec<u8> {
    bindings::TestToken::approveCall { spender: AlloyAddress::from(spender.0), amount: U256::from(amount.0) }
        .abi_encode()
}

/// Calldata of `registerEnclave(enclave, measurement, quoteSig)` for an authority's quote.
pub fn register_enclave_call(quote: &crate::messages::Quote) -> Vec<u8> {
    bindings::PaymentChannels::registerEnclaveCall {
        enclave: AlloyAddress::from(quote.report.enclave.0),
        measurement: B256::from(quote.report.measurement),
        quoteSig: Bytes::copy_from_slice(&quote.signature.0),
    }
    .abi_encode()
}

/// Calldata of `deposit(channelId, amount)`.
pub fn deposit_call(channel: ChannelId, amount: Amount) -> Vec<u8> {
    bindings::PaymentChannels::depositCall { channelId: B256::from(channel.0), amount: U256::from(amount.0) }
        .abi_encode()
}

/// The contract's view of a channel state (the ABI struct of `closeChannel`).
pub fn abi_channel_state(state: &crate::channel::ChannelState) -> bindings::PaymentChannels::ChannelState {
    bindings::PaymentChannels::ChannelState {
        channelId: B256::from(state.channel.0),
        token: AlloyAddress::from(state.token.0),
        version: state.version,
        depositA: U256::from(state.deposit_a.0),
        depositB: U256::from(state.deposit_b.0),
        balanceA: U256::from(state.balance_a.0),
        balanceB: U256::from(state.balance_b.0),
        locks: state
            .locks
            .iter()
            .map(|l| bindings::PaymentChannels::Lock {
                instanceId: B256::from(l.instance.0),
                amount: U256::from(l.amount.0),
                aToB: l.a_to_b,
                phase: l.phase.code(),
                kind: l.kind.code(),
                hub: AlloyAddress::from(l.hub.0),
                deadline: l.deadline,
            })
            .collect(),
    }
}

/// Gas of `closeChannel` without locks, with margin (measured ~60k by the contract suite).
pub const CLOSE_BASE_GAS: u64 = 150_000;
/// Gas per lock of a close, with margin: each lock resolved for the first time costs a
/// storage write and an event (measured ~30k by the contract suite at the lock cap).
pub const CLOSE_GAS_PER_LOCK: u64 = 40_000;

/// The gas limit a close carrying `locks` locks needs. An estimate cannot be made before the
/// enclave signs (and signing is final), so the limit follows the locks: at
/// [`crate::MAX_LOCKS_PER_CHANNEL`] it is ~19M, inside a 30M block.
pub fn close_gas(locks: usize) -> u64 {
    CLOSE_BASE_GAS.saturating_add(CLOSE_GAS_PER_LOCK.saturating_mul(locks as u64))
}

/// Calldata of `closeChannel(state, sig)`.
pub fn close_channel_call(signed: &SignedChannelState) -> Vec<u8> {
    bindings::PaymentChannels::closeChannelCall {
        state: abi_channel_state(&signed.state),
        sig: Bytes::copy_from_slice(&signed.signature.0),
    }
    .abi_encode()
}

/// Calldata of `recordDecision(hub, instance, applied, sig)`: posts a hub's decision
/// certificate, after which the swap locks of its instance close with it.
pub fn record_decision_call(cert: &DecisionCertificate) -> Vec<u8> {
    bindings::PaymentChannels::recordDecisionCall {
        hub: AlloyAddress::from(cert.hub.0),
        instanceId: B256::from(cert.instance.0),
        applied: cert.outcome == crate::channel::Outcome::Apply,
        sig: Bytes::copy_from_slice(&cert.signature.0),
    }
    .abi_encode()
}

/// Calldata of `claimRevert(state, sig)`: claims REVERT for the swap locks of a signed
/// closing state that are past their deadline (final after the challenge window).
pub fn claim_revert_call(signed: &SignedChannelState) -> Vec<u8> {
    bindings::PaymentChannels::claimRevertCall {
        state: abi_channel_state(&signed.state),
        sig: Bytes::copy_from_slice(&signed.signature.0),
    }
    .abi_encode()
}

/// Gas of `recordDecision`, with margin (one recovery, one storage write, one event).
pub const RECORD_DECISION_GAS: u64 = 120_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_envelope_is_a_type_2_rlp_list() {
        let key = SigningKey::from_entropy([7; 32]).unwrap();
        let tx = Eip1559Tx {
            chain: ChainId(31337),
            gas: GasParams { nonce: 3, gas_limit: 100_000, max_fee_per_gas: 2, max_priority_fee_per_gas: 1 },
            to: Some(Address([1; 20])),
            value: Amount(5),
            input: open_channel_call(Address([2; 20]), Address::default(), Amount(0)),
        };
        let signed = tx.sign(&key);
        assert_eq!(signed.raw[0], EIP1559_TYPE);
        let mut rest = &signed.raw[1..];
        let header = Header::decode(&mut rest).unwrap();
        assert!(header.list);
        assert_eq!(header.payload_length, rest.len());
        assert_eq!(signed.hash, keccak256(&signed.raw));
        assert_ne!(tx.signing_hash(), signed.hash);
    }
}
