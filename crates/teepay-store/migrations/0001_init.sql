-- teepay channel DB, version 1. Written once for both backends: `{BLOB}` becomes BLOB on
-- SQLite and BYTEA on PostgreSQL. Amounts are decimal TEXT (128-bit values fit neither
-- backend's integers); addresses, ids and hashes are 0x-hex TEXT.

-- Raw contract logs, the source of truth the derived tables are rebuilt from after a reorg.
CREATE TABLE chain_events (
    chain_id BIGINT NOT NULL,
    block_number BIGINT NOT NULL,
    log_index BIGINT NOT NULL,
    tx_hash TEXT NOT NULL,
    topics TEXT NOT NULL,
    data {BLOB} NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE sync_cursors (
    chain_id BIGINT PRIMARY KEY,
    contract TEXT NOT NULL,
    next_block BIGINT NOT NULL
);

-- Hashes of recently synced blocks, to find the fork point of a reorganization.
CREATE TABLE sync_blocks (
    chain_id BIGINT NOT NULL,
    block_number BIGINT NOT NULL,
    block_hash TEXT NOT NULL,
    PRIMARY KEY (chain_id, block_number)
);

CREATE TABLE enclaves (
    chain_id BIGINT NOT NULL,
    address TEXT NOT NULL,
    measurement TEXT NOT NULL,
    block_number BIGINT NOT NULL,
    PRIMARY KEY (chain_id, address)
);

CREATE TABLE channels (
    chain_id BIGINT NOT NULL,
    channel_id TEXT NOT NULL,
    party_a TEXT NOT NULL,
    party_b TEXT NOT NULL,
    deposit_a TEXT NOT NULL,
    deposit_b TEXT NOT NULL,
    -- Off-chain balances as of the last applied instance (the hub's view, from acks).
    balance_a TEXT NOT NULL,
    balance_b TEXT NOT NULL,
    fee_a_base TEXT NOT NULL DEFAULT '0',
    fee_a_ppm BIGINT NOT NULL DEFAULT 0,
    fee_b_base TEXT NOT NULL DEFAULT '0',
    fee_b_ppm BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    opened_block BIGINT NOT NULL,
    closed_block BIGINT,
    payout_a TEXT,
    payout_b TEXT,
    PRIMARY KEY (chain_id, channel_id)
);
CREATE INDEX channels_party_a ON channels (party_a);
CREATE INDEX channels_party_b ON channels (party_b);

CREATE TABLE instance_outcomes (
    chain_id BIGINT NOT NULL,
    instance_id TEXT NOT NULL,
    applied BIGINT NOT NULL, -- 1 applied, 0 reverted (no portable boolean in the Any driver)
    channel_id TEXT NOT NULL,
    block_number BIGINT NOT NULL,
    PRIMARY KEY (chain_id, instance_id)
);

CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec {BLOB} NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    outcome TEXT,
    failure_reason TEXT
);
CREATE INDEX instances_status ON instances (status);
