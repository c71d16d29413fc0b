-- Per-client API keys (nle_ + 64 hex). Only the SHA-256 of a key is stored; the key itself is
-- shown once when it is created. A revoked key is kept (with revoked_at) so listings show it.
CREATE TABLE roost_api_keys (
    id INTEGER PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    preview TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    -- "read", "write" or "read,write"
    scopes TEXT NOT NULL,
    -- JSON array of serials the key may reach; NULL = every device
    devices TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    last_used_at INTEGER
);
