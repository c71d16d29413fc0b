-- The tables the reference server (NoLongerEvil-SelfHosted) uses keep their names and camelCase
-- columns, so that a reference database is adopted in place and tools that read them keep working.
CREATE TABLE IF NOT EXISTS states (
    serial VARCHAR NOT NULL,
    object_key VARCHAR NOT NULL,
    object_revision INTEGER NOT NULL,
    object_timestamp INTEGER NOT NULL,
    value TEXT,
    "updatedAt" INTEGER NOT NULL,
    PRIMARY KEY (serial, object_key)
);
CREATE INDEX IF NOT EXISTS idx_states_serial ON states (serial);

CREATE TABLE IF NOT EXISTS users (
    "clerkId" VARCHAR NOT NULL,
    email VARCHAR NOT NULL,
    "createdAt" INTEGER NOT NULL,
    PRIMARY KEY ("clerkId")
);

CREATE TABLE IF NOT EXISTS "entryKeys" (
    code VARCHAR NOT NULL,
    serial VARCHAR NOT NULL,
    "createdAt" INTEGER NOT NULL,
    "expiresAt" INTEGER NOT NULL,
    "claimedBy" VARCHAR,
    "claimedAt" INTEGER,
    PRIMARY KEY (code)
);
CREATE INDEX IF NOT EXISTS "idx_entryKeys_serial" ON "entryKeys" (serial);

CREATE TABLE IF NOT EXISTS "deviceOwners" (
    serial VARCHAR NOT NULL,
    "userId" VARCHAR NOT NULL,
    "createdAt" INTEGER NOT NULL,
    PRIMARY KEY (serial)
);
CREATE INDEX IF NOT EXISTS "idx_deviceOwners_userId" ON "deviceOwners" ("userId");

CREATE TABLE IF NOT EXISTS integrations (
    "userId" VARCHAR NOT NULL,
    type VARCHAR NOT NULL,
    enabled INTEGER NOT NULL,
    config TEXT,
    "createdAt" INTEGER NOT NULL,
    "updatedAt" INTEGER NOT NULL,
    PRIMARY KEY ("userId", type)
);

CREATE TABLE IF NOT EXISTS weather (
    "postalCode" VARCHAR NOT NULL,
    country VARCHAR NOT NULL,
    "fetchedAt" INTEGER NOT NULL,
    data TEXT,
    PRIMARY KEY ("postalCode", country)
);

-- roost's own: every committed change, with the id that SSE clients resume from.
CREATE TABLE roost_changes (
    id INTEGER PRIMARY KEY,
    serial TEXT NOT NULL,
    origin TEXT NOT NULL,
    object_keys TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX idx_roost_changes_serial ON roost_changes (serial, id);
