-- Tally's spine on PostgreSQL: tenants and keys, catalog, stock, orders, idempotency records,
-- and the events table that is both the transactional outbox and the embedded log.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    -- SHA-256 of the secret; the secret itself is shown once and never stored.
    key_hash    bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    scopes      text NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

CREATE TABLE products (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE variants (
    tenant_id   uuid NOT NULL,
    sku         text NOT NULL,
    product_id  uuid NOT NULL,
    -- {"USD": 1999, "EUR": 1899}: unit price per currency in minor units.
    prices      jsonb NOT NULL,
    position    int NOT NULL,
    PRIMARY KEY (tenant_id, sku),
    FOREIGN KEY (tenant_id, product_id) REFERENCES products (tenant_id, id)
);
CREATE INDEX variants_by_product ON variants (tenant_id, product_id, position);

CREATE TABLE stock_levels (
    tenant_id   uuid NOT NULL,
    sku         text NOT NULL,
    location    text NOT NULL,
    on_hand     bigint NOT NULL,
    reserved    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, sku, location),
    FOREIGN KEY (tenant_id, sku) REFERENCES variants (tenant_id, sku),
    -- No oversell, enforced by the database and not only by code.
    CONSTRAINT stock_reserved_not_negative CHECK (reserved >= 0),
    CONSTRAINT stock_available_not_negative CHECK (on_hand - reserved >= 0)
);

CREATE TABLE orders (
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    id                uuid NOT NULL,
    channel           text NOT NULL,
    customer_id       text NOT NULL,
    customer_email    text,
    currency          text NOT NULL,
    total_minor       bigint NOT NULL CHECK (total_minor >= 0),
    status            text NOT NULL,
    lines             jsonb NOT NULL,
    shipping_address  jsonb NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX orders_by_customer ON orders (tenant_id, customer_id, id);

CREATE TABLE idempotency_records (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    key             text NOT NULL,
    fingerprint     bytea NOT NULL CHECK (length(fingerprint) = 32),
    status_code     smallint NOT NULL,
    location        text,
    response_body   bytea NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_records_by_expiry ON idempotency_records (expires_at);

-- The outbox and the embedded log. A row is inserted by the command's transaction with
-- `position` NULL; the relay gives committed rows their log positions afterwards, one relay
-- transaction at a time, so positions become visible strictly in increasing order and a reader
-- that has seen position P can never later find a row below P (the log is gap-free).
CREATE TABLE events (
    seq             bigserial PRIMARY KEY,
    id              uuid NOT NULL,
    position        bigint,
    tenant_id       uuid NOT NULL,
    type            text NOT NULL,
    source          text NOT NULL,
    subject         text NOT NULL,
    partition_key   text NOT NULL,
    partition       int NOT NULL,
    time            timestamptz NOT NULL,
    data            jsonb NOT NULL,
    correlation_id  text,
    causation_id    text,
    traceparent     text
);
CREATE INDEX events_pending ON events (seq) WHERE position IS NULL;
CREATE UNIQUE INDEX events_by_position ON events (position) WHERE position IS NOT NULL;
CREATE INDEX events_by_partition ON events (partition, position) WHERE position IS NOT NULL;
CREATE INDEX events_by_subject ON events (tenant_id, subject, seq);

-- The log's head: the last position given out. Its single row is the relay's lock.
CREATE TABLE log_head (
    id          int PRIMARY KEY CHECK (id = 1),
    position    bigint NOT NULL,
    partitions  int NOT NULL CHECK (partitions > 0)
);
INSERT INTO log_head (id, position, partitions) VALUES (1, 0, 8);

CREATE TABLE consumer_offsets (
    group_name  text NOT NULL,
    partition   int NOT NULL,
    position    bigint NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (group_name, partition)
);
