-- The asset each channel holds (issue 16): zero for ether, else the ERC-20 token's address.
-- Channels opened before tokens existed are ether channels.
ALTER TABLE channels ADD COLUMN token TEXT NOT NULL DEFAULT '0x0000000000000000000000000000000000000000';
