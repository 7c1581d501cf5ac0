-- Payees' receipts for invoices paid by multi-hop instances (issue 16), kept for the payer:
-- it may be offline when the receipt arrives, and asks again with the instance's status.
-- One per instance: an instance pays at most one invoice.
CREATE TABLE receipts (
    instance_id TEXT PRIMARY KEY,
    invoice_id TEXT NOT NULL,
    receipt {BLOB} NOT NULL,
    received_at BIGINT NOT NULL
);
