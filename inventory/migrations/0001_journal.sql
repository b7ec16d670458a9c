-- The CA issuance journal: every certificate the CA hands out, committed
-- before it is returned. device_id carries no foreign key: a device's first
-- certificate is journaled before the device row is activated.
CREATE TABLE certificates (
    serial            TEXT    PRIMARY KEY,             -- lowercase hex, no leading zeros
    kind              TEXT    NOT NULL CHECK (kind IN ('device', 'server', 'admin')),
    device_id         TEXT    NOT NULL DEFAULT '',
    subject           TEXT    NOT NULL,
    not_before        INTEGER NOT NULL,                -- unix microseconds, UTC
    not_after         INTEGER NOT NULL,
    der               BLOB    NOT NULL,
    status            TEXT    NOT NULL DEFAULT 'issued'
                      CHECK (status IN ('issued', 'active', 'superseded', 'revoked')),
    issued_at         INTEGER NOT NULL,
    status_changed_at INTEGER,
    status_reason     TEXT    NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX certificates_by_device ON certificates (device_id, issued_at);
