-- Tally's spine on SQLite: the same tables as on PostgreSQL. Identifiers are 16-byte BLOBs,
-- times are Unix microseconds (INTEGER), JSON is TEXT. SQLite has one writer at a time, so the
-- order in which events are inserted is their commit order and `position` is set on insert.

CREATE TABLE tenants (
    id          BLOB PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id          BLOB PRIMARY KEY,
    tenant_id   BLOB NOT NULL REFERENCES tenants (id),
    key_hash    BLOB NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    scopes      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;

CREATE TABLE products (
    tenant_id   BLOB NOT NULL REFERENCES tenants (id),
    id          BLOB NOT NULL,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) STRICT, WITHOUT ROWID;

CREATE TABLE variants (
    tenant_id   BLOB NOT NULL,
    sku         TEXT NOT NULL,
    product_id  BLOB NOT NULL,
    prices      TEXT NOT NULL,
    position    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, sku),
    FOREIGN KEY (tenant_id, product_id) REFERENCES products (tenant_id, id)
) STRICT, WITHOUT ROWID;
CREATE INDEX variants_by_product ON variants (tenant_id, product_id, position);

CREATE TABLE stock_levels (
    tenant_id   BLOB NOT NULL,
    sku         TEXT NOT NULL,
    location    TEXT NOT NULL,
    on_hand     INTEGER NOT NULL,
    reserved    INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, sku, location),
    FOREIGN KEY (tenant_id, sku) REFERENCES variants (tenant_id, sku),
    CONSTRAINT stock_reserved_not_negative CHECK (reserved >= 0),
    CONSTRAINT stock_available_not_negative CHECK (on_hand - reserved >= 0)
) STRICT, WITHOUT ROWID;

CREATE TABLE orders (
    tenant_id         BLOB NOT NULL REFERENCES tenants (id),
    id                BLOB NOT NULL,
    channel           TEXT NOT NULL,
    customer_id       TEXT NOT NULL,
    customer_email    TEXT,
    currency          TEXT NOT NULL,
    total_minor       INTEGER NOT NULL CHECK (total_minor >= 0),
    status            TEXT NOT NULL,
    lines             TEXT NOT NULL,
    shipping_address  TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) STRICT, WITHOUT ROWID;
CREATE INDEX orders_by_customer ON orders (tenant_id, customer_id, id);

CREATE TABLE idempotency_records (
    tenant_id       BLOB NOT NULL REFERENCES tenants (id),
    key             TEXT NOT NULL,
    fingerprint     BLOB NOT NULL CHECK (length(fingerprint) = 32),
    status_code     INTEGER NOT NULL,
    location        TEXT,
    response_body   BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotency_records_by_expiry ON idempotency_records (expires_at);

CREATE TABLE events (
    -- AUTOINCREMENT: a position is never reused, even after old events are purged.
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    id              BLOB NOT NULL,
    tenant_id       BLOB NOT NULL,
    type            TEXT NOT NULL,
    source          TEXT NOT NULL,
    subject         TEXT NOT NULL,
    partition_key   TEXT NOT NULL,
    partition       INTEGER NOT NULL,
    time            INTEGER NOT NULL,
    data            TEXT NOT NULL,
    correlation_id  TEXT,
    causation_id    TEXT,
    traceparent     TEXT
) STRICT;
CREATE INDEX events_by_partition ON events (partition, position);
CREATE INDEX events_by_subject ON events (tenant_id, subject, position);

CREATE TABLE log_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    position    INTEGER NOT NULL,
    partitions  INTEGER NOT NULL CHECK (partitions > 0)
) STRICT;
INSERT INTO log_head (id, position, partitions) VALUES (1, 0, 8);

CREATE TABLE consumer_offsets (
    group_name  TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (group_name, partition)
) STRICT, WITHOUT ROWID;
