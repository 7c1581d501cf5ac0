//! Commit receipts (DESIGN §10): no enclave of a hub group lets a flush's batches out until a
//! majority of the group's members hold that flush.
//!
//! Raft runs in the hosts, so without this a replica's host could release a flush before it
//! is committed, or fork its shadow into a live enclave and drive nodes outside Raft, and
//! after a failover an instance could be decided twice. Here every replica's enclave has a
//! *member key* of its own (sealed with its state); a follower's enclave signs a receipt
//! for the entries it has applied ([`Coordinator::receipt`]); a live enclave in a group
//! holds each flush's batches and hands them out only for receipts of a majority of the
//! members, itself counting as one ([`Coordinator::release`]). A rogue fork then gets nothing
//! out: the other members' enclaves apply only what their faithful hosts feed them.
//!
//! The membership is decided by the group's operators, not by any replica's host: it names
//! a governance key at founding ([`Coordinator::found_group`]) and changes only by a list of
//! members that key signed, with a higher version ([`Coordinator::update_membership`]).

use crate::{Coordinator, HubError, tag};
use borsh::{BorshDeserialize, BorshSerialize};
use teepay_types::{
    Address, Hash32, Platform, Signature, SignedHubBatch, SigningKey, keccak256_parts, verify_signer,
};

/// Who may hold the group's entries, and who may change that.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Membership {
    /// The operators' key: only a list it signed changes the members.
    pub governance: Address,
    pub version: u64,
    /// Member keys (one per replica enclave).
    pub members: Vec<Address>,
}

impl Membership {
    /// Receipts (the releasing enclave's own included) a flush needs: a majority.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }
}

/// A new member list, signed by the governance key.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedMembership {
    pub version: u64,
    pub members: Vec<Address>,
    pub signature: Signature,
}

fn membership_digest(hub: Address, version: u64, members: &[Address]) -> Hash32 {
    let list: Vec<u8> = members.iter().flat_map(|m| m.0).collect();
    keccak256_parts(&[b"teepay/hub-group/membership/v1", &hub.0, &version.to_be_bytes(), &list])
}

impl SignedMembership {
    /// The operators sign `members` as version `version` of `hub`'s group.
    pub fn sign(governance: &SigningKey, hub: Address, version: u64, members: Vec<Address>) -> Self {
        let signature = governance.sign_digest(&membership_digest(hub, version, &members));
        SignedMembership { version, members, signature }
    }

    /// True iff `governance` signed this list for `hub`'s group (a host can check this
    /// before bothering the enclave, which checks it again).
    pub fn is_signed_by(&self, hub: Address, governance: Address) -> bool {
        verify_signer(&membership_digest(hub, self.version, &self.members), &self.signature, governance)
    }
}

/// A member's word that its enclave holds the group's entries up to `seq`, whose hash is
/// `head`.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Receipt {
    pub member: Address,
    pub seq: u64,
    pub head: Hash32,
    pub signature: Signature,
}

fn receipt_digest(hub: Address, seq: u64, head: &Hash32) -> Hash32 {
    keccak256_parts(&[b"teepay/hub-group/receipt/v1", &hub.0, &seq.to_be_bytes(), head])
}

/// A flush whose batches wait for receipts.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub seq: u64,
    pub head: Hash32,
    pub batches: Vec<SignedHubBatch>,
}

impl<P: Platform> Coordinator<P> {
    /// Makes this (fresh) hub enclave the founder of a group governed by `governance`, with
    /// a member key of its own from `entropy` as the only member. From now on its flushes
    /// are replicated and their batches wait for receipts. Refused once founded.
    pub fn found_group(&mut self, governance: Address, entropy: [u8; 32]) -> Result<Address, HubError> {
        if self.state.membership.is_some() {
            return Err(HubError::GroupFounded);
        }
        let member = SigningKey::from_entropy(entropy)?;
        let membership = Membership { governance, version: 0, members: vec![member.address()] };
        self.log(tag::FOUND_GROUP, &membership);
        self.state.membership = Some(membership);
        self.state.dirty = true;
        // The member key is sealed with the identity, in a snapshot: the next seal is one.
        self.budget.set_snapshot_due();
        let address = member.address();
        self.member = Some(member);
        Ok(address)
    }

    /// This enclave's member key (its receipts' signer), once it founded or joined a group.
    pub fn member_address(&self) -> Option<Address> {
        self.member.as_ref().map(SigningKey::address)
    }

    /// Replaces the member list with one the governance key signed, of a higher version.
    /// Logged, so it reaches every replica as part of the next entry.
    pub fn update_membership(&mut self, signed: &SignedMembership) -> Result<(), HubError> {
        self.change_membership(signed)?;
        self.log(tag::MEMBERSHIP, signed);
        Ok(())
    }

    pub(crate) fn change_membership(&mut self, signed: &SignedMembership) -> Result<(), HubError> {
        let hub = self.address();
        let current = self.state.membership.as_ref().ok_or(HubError::NotAGroup)?;
        if signed.version <= current.version {
            return Err(HubError::StaleMembership { current: current.version, got: signed.version });
        }
        let digest = membership_digest(hub, signed.version, &signed.members);
        if signed.members.is_empty() || !verify_signer(&digest, &signed.signature, current.governance) {
            return Err(HubError::BadMembership);
        }
        let mut members = signed.members.clone();
        members.sort();
        members.dedup();
        let governance = current.governance;
        self.state.membership = Some(Membership { governance, version: signed.version, members });
        self.state.dirty = true;
        Ok(())
    }

    /// This member's receipt for every entry it holds (a follower: after applying them).
    /// `None` for an enclave that is not in a group.
    pub fn receipt(&self) -> Option<Receipt> {
        let member = self.member.as_ref()?;
        let chain = self.state.replica;
        let signature = member.sign_digest(&receipt_digest(self.address(), chain.seq, &chain.head));
        Some(Receipt { member: member.address(), seq: chain.seq, head: chain.head, signature })
    }

    /// Flushes whose batches wait for receipts.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Hands out, in order, the batches of every held flush that a majority of the members
    /// now holds: a receipt counts for the entries up to its own, if it is a current
    /// member's, signed by it, and for an entry this enclave made (the same hash at that
    /// point); this enclave counts itself. Receipts that prove nothing are ignored.
    pub fn release(&mut self, receipts: &[Receipt]) -> Vec<SignedHubBatch> {
        let Some(membership) = &self.state.membership else { return Vec::new() };
        let hub = self.address();
        let heads: Vec<(u64, Hash32)> = self.held.iter().map(|h| (h.seq, h.head)).collect();
        // The furthest entry of ours each member holds.
        let mut holds: std::collections::BTreeMap<Address, u64> = std::collections::BTreeMap::new();
        if let Some(me) = self.member.as_ref().map(SigningKey::address)
            && membership.members.contains(&me)
        {
            holds.insert(me, u64::MAX);
        }
        for r in receipts {
            let ours = heads.iter().any(|(seq, head)| *seq == r.seq && *head == r.head);
            if ours
                && membership.members.contains(&r.member)
                && verify_signer(&receipt_digest(hub, r.seq, &r.head), &r.signature, r.member)
            {
                let held = holds.entry(r.member).or_insert(0);
                *held = (*held).max(r.seq);
            }
        }
        let quorum = membership.quorum();
        let mut out = Vec::new();
        while let Some(first) = self.held.front() {
            if holds.values().filter(|s| **s >= first.seq).count() < quorum {
                break;
            }
            out.extend(self.held.pop_front().expect("checked").batches);
        }
        out
    }
}
