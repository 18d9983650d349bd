-- Functions that let the PostgreSQL store do in one round trip what takes a dozen through
-- single statements: on two cores the client's and the server's share of each round trip,
-- not the work of the statements, is what bounds throughput.

-- Appends events to the outbox under their partition keys' advisory locks, taken in ascending
-- order before any event gets its `seq`, and held to the end of the transaction (see
-- crates/store/src/postgres/mod.rs): the only way events enter the `events` table.
CREATE FUNCTION append_events(
    p_lock_class int, p_lock_ids int[],
    p_event_ids uuid[], p_event_tenants uuid[], p_event_types text[], p_event_sources text[],
    p_event_subjects text[], p_event_keys text[], p_event_partitions int[],
    p_event_times timestamptz[], p_event_data text[], p_event_correlations text[],
    p_event_causations text[], p_event_traceparents text[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_event_ids) > 0 THEN
        PERFORM pg_advisory_xact_lock(p_lock_class, k) FROM unnest(p_lock_ids) AS k;
        INSERT INTO events (id, tenant_id, type, source, subject, partition_key, partition, time,
                            data, correlation_id, causation_id, traceparent)
            SELECT id, tenant_id, type, source, subject, key, partition, time, data::jsonb,
                   correlation_id, causation_id, traceparent
            FROM unnest(p_event_ids, p_event_tenants, p_event_types, p_event_sources,
                        p_event_subjects, p_event_keys, p_event_partitions, p_event_times,
                        p_event_data, p_event_correlations, p_event_causations,
                        p_event_traceparents)
                AS e(id, tenant_id, type, source, subject, key, partition, time, data,
                     correlation_id, causation_id, traceparent);
    END IF;
END $$;

-- What every command writes beside its own rows, in its transaction: the partition-key locks
-- (ascending), its events, its audit record and the response under its idempotency key (see
-- crates/store/src/command.rs and `Tx::record_command`).
CREATE FUNCTION record_command(
    p_lock_class int, p_lock_ids int[],
    p_event_ids uuid[], p_event_tenants uuid[], p_event_types text[], p_event_sources text[],
    p_event_subjects text[], p_event_keys text[], p_event_partitions int[],
    p_event_times timestamptz[], p_event_data text[], p_event_correlations text[],
    p_event_causations text[], p_event_traceparents text[],
    p_audit_tenant uuid, p_audit_id uuid, p_audit_at timestamptz, p_audit_body text,
    p_audit_entity_type text, p_audit_entity_id text,
    p_tenant uuid, p_key text, p_fingerprint bytea, p_status_code smallint, p_location text,
    p_response_body bytea, p_created_at timestamptz, p_expires_at timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM append_events(p_lock_class, p_lock_ids, p_event_ids, p_event_tenants, p_event_types,
                          p_event_sources, p_event_subjects, p_event_keys, p_event_partitions,
                          p_event_times, p_event_data, p_event_correlations, p_event_causations,
                          p_event_traceparents);
    INSERT INTO audit_records (tenant_id, id, at, body, entity_type, entity_id)
        VALUES (p_audit_tenant, p_audit_id, p_audit_at, p_audit_body::jsonb, p_audit_entity_type,
                p_audit_entity_id);
    INSERT INTO idempotency_records (tenant_id, key, fingerprint, status_code, location,
                                     response_body, created_at, expires_at)
        VALUES (p_tenant, p_key, p_fingerprint, p_status_code, p_location, p_response_body,
                p_created_at, p_expires_at);
END $$;

-- An effect on one order: the statements of
-- crates/store/src/effect.rs `write_in`, in the same order and with the same locks, run by the
-- server in the implicit transaction of a single call (see crates/store/src/postgres/effect.rs).
--
-- Returns 'written', 'applied' (the row that makes it once was there: nothing is stored) or
-- 'changed' (the order is not in the expected status and saga: nothing is stored). A stock row
-- that refuses a move raises, which undoes the whole call, with the move's index (from 1) as
-- the detail: SQLSTATE TL002 for a reservation (other orders took the units since it was
-- planned), TL001 for a move of the order's own hold (the store is inconsistent).
CREATE FUNCTION write_effect(
    -- What makes it once: an inbox row (p_group, p_event) or a webhook delivery row
    -- (p_source, p_delivery); the other pair is NULL.
    p_group text, p_event uuid, p_source text, p_delivery text,
    -- The order and the change to it.
    p_tenant uuid, p_order uuid, p_expected_status text, p_expected_saga jsonb,
    p_status text, p_saga jsonb, p_at timestamptz,
    -- Journal entries, one element each, and their postings, one element each.
    p_entry_ids text[], p_entry_kinds text[], p_entry_pending text[], p_entry_bodies text[],
    p_entry_orders uuid[], p_entry_times timestamptz[],
    p_posting_entries text[], p_posting_lines int[], p_posting_accounts text[],
    p_posting_currencies text[], p_posting_amounts bigint[],
    -- The audit record.
    p_audit_tenant uuid, p_audit_id uuid, p_audit_at timestamptz, p_audit_body text,
    p_audit_entity_type text, p_audit_entity_id text,
    -- The events, and the partition-key locks to take before appending them (ascending).
    p_lock_class int, p_lock_ids int[],
    p_event_ids uuid[], p_event_tenants uuid[], p_event_types text[], p_event_sources text[],
    p_event_subjects text[], p_event_keys text[], p_event_partitions int[],
    p_event_times timestamptz[], p_event_data text[], p_event_correlations text[],
    p_event_causations text[], p_event_traceparents text[],
    -- Moves of stock for the order, in (SKU, location) order.
    p_move_skus text[], p_move_locations text[], p_move_kinds text[], p_move_quantities bigint[],
    p_move_orders uuid[], p_move_times timestamptz[], p_move_on_hand bigint[],
    p_move_reserved bigint[]
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    inserted int;
    current_status text;
    current_saga jsonb;
    move int;
BEGIN
    IF p_group IS NOT NULL THEN
        INSERT INTO inbox (group_name, event_id, applied_at) VALUES (p_group, p_event, p_at)
            ON CONFLICT DO NOTHING;
    ELSE
        INSERT INTO webhook_deliveries (source, delivery_id, received_at)
            VALUES (p_source, p_delivery, p_at) ON CONFLICT DO NOTHING;
    END IF;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted = 0 THEN
        RETURN 'applied';
    END IF;

    SELECT status, saga INTO current_status, current_saga FROM orders
        WHERE tenant_id = p_tenant AND id = p_order FOR UPDATE;
    IF NOT FOUND OR current_status <> p_expected_status OR current_saga <> p_expected_saga THEN
        -- Take back the row that makes it once, inserted by this call alone.
        IF p_group IS NOT NULL THEN
            DELETE FROM inbox WHERE group_name = p_group AND event_id = p_event;
        ELSE
            DELETE FROM webhook_deliveries WHERE source = p_source AND delivery_id = p_delivery;
        END IF;
        RETURN 'changed';
    END IF;

    UPDATE orders SET status = p_status, saga = p_saga, updated_at = p_at
        WHERE tenant_id = p_tenant AND id = p_order;

    -- Postings before their entries: the entry's trigger checks that they balance.
    INSERT INTO postings (tenant_id, entry_id, line, account, currency, amount_minor)
        SELECT p_tenant, entry_id, line, account, currency, amount
        FROM unnest(p_posting_entries, p_posting_lines, p_posting_accounts, p_posting_currencies,
                    p_posting_amounts) AS p(entry_id, line, account, currency, amount);
    INSERT INTO journal_entries (tenant_id, id, kind, pending_id, body, order_id, created_at)
        SELECT p_tenant, id, kind, pending_id, body::jsonb, order_id, created_at
        FROM unnest(p_entry_ids, p_entry_kinds, p_entry_pending, p_entry_bodies, p_entry_orders,
                    p_entry_times) AS e(id, kind, pending_id, body, order_id, created_at);

    INSERT INTO audit_records (tenant_id, id, at, body, entity_type, entity_id)
        VALUES (p_audit_tenant, p_audit_id, p_audit_at, p_audit_body::jsonb, p_audit_entity_type,
                p_audit_entity_id);

    PERFORM append_events(p_lock_class, p_lock_ids, p_event_ids, p_event_tenants, p_event_types,
                          p_event_sources, p_event_subjects, p_event_keys, p_event_partitions,
                          p_event_times, p_event_data, p_event_correlations, p_event_causations,
                          p_event_traceparents);

    -- Stock last, row by row in the given order, so that a busy SKU's row stays locked for its
    -- own update and the commit only, and concurrent moves cannot deadlock.
    FOR move IN 1 .. coalesce(cardinality(p_move_skus), 0) LOOP
        UPDATE stock_levels
            SET on_hand = on_hand + p_move_on_hand[move],
                reserved = reserved + p_move_reserved[move], updated_at = p_move_times[move]
            WHERE tenant_id = p_tenant AND sku = p_move_skus[move]
              AND location = p_move_locations[move]
              AND reserved + p_move_reserved[move] >= 0
              AND on_hand + p_move_on_hand[move] - (reserved + p_move_reserved[move]) >= 0;
        IF NOT FOUND THEN
            IF p_move_kinds[move] = 'reserved' THEN
                RAISE EXCEPTION 'stock taken: move %', move
                    USING ERRCODE = 'TL002', DETAIL = move::text;
            END IF;
            RAISE EXCEPTION 'stock row refused move %', move
                USING ERRCODE = 'TL001', DETAIL = move::text;
        END IF;
        INSERT INTO stock_movements (tenant_id, sku, location, kind, quantity, order_id, at)
            VALUES (p_tenant, p_move_skus[move], p_move_locations[move], p_move_kinds[move],
                    p_move_quantities[move], p_move_orders[move], p_move_times[move]);
    END LOOP;
    RETURN 'written';
END $$;
