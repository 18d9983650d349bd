-- The checkout saga, consumers' inboxes and dead letters, stock movements, the ledger and the
-- audit trail. Same tables as on PostgreSQL.

ALTER TABLE orders ADD COLUMN saga TEXT NOT NULL DEFAULT '{}';

CREATE TABLE inbox (
    group_name  TEXT NOT NULL,
    event_id    BLOB NOT NULL,
    applied_at  INTEGER NOT NULL,
    PRIMARY KEY (group_name, event_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE dead_letters (
    id            BLOB PRIMARY KEY,
    tenant_id     BLOB NOT NULL,
    group_name    TEXT NOT NULL,
    event_id      BLOB NOT NULL,
    partition     INTEGER NOT NULL,
    position      INTEGER NOT NULL,
    event_type    TEXT NOT NULL,
    subject       TEXT NOT NULL,
    error         TEXT NOT NULL,
    attempts      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('open', 'retrying', 'retried', 'discarded')),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    UNIQUE (group_name, event_id)
) STRICT;
CREATE INDEX dead_letters_by_tenant ON dead_letters (tenant_id, status, created_at);

CREATE TABLE webhook_deliveries (
    source       TEXT NOT NULL,
    delivery_id  TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    PRIMARY KEY (source, delivery_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE stock_movements (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   BLOB NOT NULL,
    sku         TEXT NOT NULL,
    location    TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('received', 'removed', 'reserved', 'released', 'shipped', 'returned')),
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    order_id    BLOB,
    at          INTEGER NOT NULL
) STRICT;
CREATE INDEX stock_movements_by_sku ON stock_movements (tenant_id, sku, location);

CREATE TABLE postings (
    tenant_id     BLOB NOT NULL,
    entry_id      TEXT NOT NULL,
    line          INTEGER NOT NULL,
    account       TEXT NOT NULL,
    currency      TEXT NOT NULL,
    amount_minor  INTEGER NOT NULL CHECK (amount_minor <> 0),
    PRIMARY KEY (tenant_id, entry_id, line)
) STRICT, WITHOUT ROWID;
CREATE INDEX postings_by_account ON postings (tenant_id, account, currency);

CREATE TABLE journal_entries (
    tenant_id    BLOB NOT NULL,
    id           TEXT NOT NULL,
    kind         TEXT NOT NULL,
    pending_id   TEXT,
    body         TEXT NOT NULL,
    order_id     BLOB,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) STRICT, WITHOUT ROWID;

-- Postings first, then the entry: the entry's insert is refused unless its postings balance.
CREATE TRIGGER journal_entries_balanced BEFORE INSERT ON journal_entries
BEGIN
    SELECT RAISE(ABORT, 'journal entry has fewer than two postings')
    WHERE (SELECT count(*) FROM postings WHERE tenant_id = NEW.tenant_id AND entry_id = NEW.id) < 2;
    SELECT RAISE(ABORT, 'journal entry does not balance')
    WHERE EXISTS (SELECT 1 FROM postings WHERE tenant_id = NEW.tenant_id AND entry_id = NEW.id
                  GROUP BY currency HAVING sum(amount_minor) <> 0);
END;
CREATE TRIGGER journal_entries_no_update BEFORE UPDATE ON journal_entries
BEGIN SELECT RAISE(ABORT, 'ledger rows are immutable'); END;
CREATE TRIGGER journal_entries_no_delete BEFORE DELETE ON journal_entries
BEGIN SELECT RAISE(ABORT, 'ledger rows are immutable'); END;
CREATE TRIGGER postings_no_update BEFORE UPDATE ON postings
BEGIN SELECT RAISE(ABORT, 'ledger rows are immutable'); END;
CREATE TRIGGER postings_no_delete BEFORE DELETE ON postings
BEGIN SELECT RAISE(ABORT, 'ledger rows are immutable'); END;

CREATE TABLE audit_records (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id    BLOB NOT NULL,
    id           BLOB NOT NULL UNIQUE,
    sequence     INTEGER,
    at           INTEGER NOT NULL,
    body         TEXT NOT NULL,
    entity_type  TEXT NOT NULL,
    entity_id    TEXT NOT NULL,
    prev_hash    BLOB,
    hash         BLOB,
    UNIQUE (tenant_id, sequence)
) STRICT;
CREATE INDEX audit_records_unsealed ON audit_records (seq) WHERE sequence IS NULL;
CREATE INDEX audit_records_by_entity ON audit_records (tenant_id, entity_type, entity_id, seq);

CREATE TABLE audit_heads (
    tenant_id  BLOB PRIMARY KEY,
    sequence   INTEGER NOT NULL,
    hash       BLOB NOT NULL
) STRICT, WITHOUT ROWID;
