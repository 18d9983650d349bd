-- The checkout saga, consumers' inboxes and dead letters, stock movements, the ledger and the
-- audit trail.

-- The saga's persisted state beside the order: reservations, partner references, reasons.
ALTER TABLE orders ADD COLUMN saga jsonb NOT NULL DEFAULT '{}';

-- Every event a consumer group has applied, written in the effect's own transaction.
CREATE TABLE inbox (
    group_name  text NOT NULL,
    event_id    uuid NOT NULL,
    applied_at  timestamptz NOT NULL,
    PRIMARY KEY (group_name, event_id)
);

CREATE TABLE dead_letters (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    group_name    text NOT NULL,
    event_id      uuid NOT NULL,
    partition     int NOT NULL,
    position      bigint NOT NULL,
    event_type    text NOT NULL,
    subject       text NOT NULL,
    error         text NOT NULL,
    -- [{"at": …, "error": …}] one element per failed attempt.
    attempts      jsonb NOT NULL,
    status        text NOT NULL CHECK (status IN ('open', 'retrying', 'retried', 'discarded')),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    UNIQUE (group_name, event_id)
);
CREATE INDEX dead_letters_by_tenant ON dead_letters (tenant_id, status, created_at);

-- Inbound partner webhooks already applied, by the partner's delivery id.
CREATE TABLE webhook_deliveries (
    source       text NOT NULL,
    delivery_id  text NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (source, delivery_id)
);

-- Every change of stock, so that stock can be reconciled: on hand = received - removed
-- - shipped + returned, per SKU and location.
CREATE TABLE stock_movements (
    seq         bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    sku         text NOT NULL,
    location    text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('received', 'removed', 'reserved', 'released', 'shipped', 'returned')),
    quantity    bigint NOT NULL CHECK (quantity > 0),
    order_id    uuid,
    at          timestamptz NOT NULL
);
CREATE INDEX stock_movements_by_sku ON stock_movements (tenant_id, sku, location);

-- The ledger. Postings are inserted first, then their entry; the entry's insert trigger refuses
-- an entry whose postings do not sum to zero per currency, so an unbalanced entry can never
-- commit. Neither table accepts updates or deletes.
CREATE TABLE postings (
    tenant_id     uuid NOT NULL,
    entry_id      text NOT NULL,
    line          int NOT NULL,
    account       text NOT NULL,
    currency      text NOT NULL,
    amount_minor  bigint NOT NULL CHECK (amount_minor <> 0),
    PRIMARY KEY (tenant_id, entry_id, line)
);
CREATE INDEX postings_by_account ON postings (tenant_id, account, currency);

CREATE TABLE journal_entries (
    tenant_id    uuid NOT NULL,
    id           text NOT NULL,
    kind         text NOT NULL,
    pending_id   text,
    body         jsonb NOT NULL,
    order_id     uuid,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE FUNCTION journal_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM postings WHERE tenant_id = NEW.tenant_id AND entry_id = NEW.id) < 2 THEN
        RAISE EXCEPTION 'journal entry % has fewer than two postings', NEW.id USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM postings WHERE tenant_id = NEW.tenant_id AND entry_id = NEW.id
               GROUP BY currency HAVING sum(amount_minor) <> 0) THEN
        RAISE EXCEPTION 'journal entry % does not balance', NEW.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER journal_entries_balanced BEFORE INSERT ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION journal_entry_balanced();

CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are immutable' USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER journal_entries_immutable BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER postings_immutable BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();

-- The audit trail. A record is inserted in the transaction of the change it describes, with
-- no place in its tenant's chain yet; the relay seals records in insertion order (sequence,
-- previous hash, hash), one relay transaction at a time, like log positions.
CREATE TABLE audit_records (
    seq          bigserial PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL UNIQUE,
    sequence     bigint,
    at           timestamptz NOT NULL,
    body         jsonb NOT NULL,
    entity_type  text NOT NULL,
    entity_id    text NOT NULL,
    prev_hash    bytea,
    hash         bytea,
    UNIQUE (tenant_id, sequence)
);
CREATE INDEX audit_records_unsealed ON audit_records (seq) WHERE sequence IS NULL;
CREATE INDEX audit_records_by_entity ON audit_records (tenant_id, entity_type, entity_id, seq);

CREATE TABLE audit_heads (
    tenant_id  uuid PRIMARY KEY,
    sequence   bigint NOT NULL,
    hash       bytea NOT NULL
);
