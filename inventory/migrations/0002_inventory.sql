-- Devices, enrollment tokens and the hash-chained audit trail.
CREATE TABLE devices (
    id             TEXT    PRIMARY KEY,                -- base32 of the EK fingerprint's first 20 bytes
    ek_fingerprint TEXT    NOT NULL UNIQUE,            -- lowercase hex SHA-256 of the PKIX EK
    ek_public      BLOB,
    ek_certificate BLOB,
    ak_public      BLOB,
    state          TEXT    NOT NULL
                   CHECK (state IN ('registered', 'pending', 'active', 'rejected', 'quarantined', 'revoked')),
    state_reason   TEXT    NOT NULL DEFAULT '',
    facts          TEXT    NOT NULL DEFAULT '{}',      -- JSON object of strings
    labels         TEXT    NOT NULL DEFAULT '{}',      -- JSON object of strings
    pcrs           TEXT    NOT NULL DEFAULT '[]',      -- JSON array of {index, alg, digest}
    pcrs_at        INTEGER,
    current_serial TEXT    REFERENCES certificates (serial),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    enrolled_at    INTEGER
) STRICT;

CREATE INDEX devices_by_state ON devices (state, created_at);

CREATE TABLE enrollment_tokens (
    id             TEXT    PRIMARY KEY,                -- public handle: hex of the hash's first 6 bytes
    secret_hash    BLOB    NOT NULL UNIQUE,            -- SHA-256 of the secret; the secret is never stored
    ek_fingerprint TEXT    NOT NULL DEFAULT '',        -- optional binding to one EK
    labels         TEXT    NOT NULL DEFAULT '{}',
    created_by     TEXT    NOT NULL DEFAULT '',
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER,
    used_by        TEXT    NOT NULL DEFAULT '',        -- device ID that consumed it
    revoked_at     INTEGER
) STRICT;

-- Append-only, hash-chained: hash = SHA-256(prev_hash || canonical row).
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY,
    at             INTEGER NOT NULL,
    type           TEXT    NOT NULL,
    device_id      TEXT    NOT NULL DEFAULT '',
    ek_fingerprint TEXT    NOT NULL DEFAULT '',
    outcome        TEXT    NOT NULL CHECK (outcome IN ('accepted', 'refused', 'info')),
    code           TEXT    NOT NULL DEFAULT '',
    reason         TEXT    NOT NULL DEFAULT '',
    peer           TEXT    NOT NULL DEFAULT '',
    actor          TEXT    NOT NULL DEFAULT '',
    details        TEXT    NOT NULL DEFAULT '{}',
    prev_hash      BLOB    NOT NULL,
    hash           BLOB    NOT NULL
) STRICT;

CREATE INDEX events_by_device ON events (device_id, seq);
CREATE INDEX events_by_type ON events (type, seq);
