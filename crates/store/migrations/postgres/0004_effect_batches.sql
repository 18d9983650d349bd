-- Group commit on PostgreSQL: many consumers' prepared effects stored by one call, in one
-- transaction, so that they share one round trip and one wait for the disk (see
-- crates/store/src/postgres/batch.rs). Each effect keeps the outcome `write_effect` would give
-- it alone: one that was applied before, whose order changed or whose stock row refuses a move
-- stores nothing, and the others are written.
--
-- Effects come as one array element each (p_once_* to p_audit_*); their journal entries,
-- postings, events and stock moves as one element each with the index (from 1) of the effect
-- they belong to. An effect's moves are consecutive, in (SKU, location) order, from
-- p_move_from[i] for p_move_count[i] elements.
--
-- Locks are taken in one order, the order every other writer takes them in, so that two batches
-- (of two processes) and a batch and a single effect or command cannot deadlock: the rows that
-- make the effects once (the client sorts the batch by them), then the orders, then the
-- partition-key advisory locks (p_lock_ids comes sorted), then the stock rows, each kind in
-- ascending key order (text by its bytes, as the client sorts an effect's moves).
--
-- Returns one outcome per effect: 'written', 'applied', 'changed', or 'taken:K' / 'refused:K'
-- for the effect's K-th move (from 1) that its row refuses, as a reservation of units other
-- orders took since it was planned or as a move of the order's own hold (the store is
-- inconsistent). Anything else that fails (a journal entry that does not balance, an id used
-- twice) raises and undoes the whole call; the client then stores the effects one by one, so
-- that the failure is the failing effect's alone.
CREATE FUNCTION write_effects(
    p_once_groups text[], p_once_events uuid[], p_once_sources text[], p_once_deliveries text[],
    p_tenants uuid[], p_orders uuid[], p_expected_statuses text[], p_expected_sagas jsonb[],
    p_statuses text[], p_sagas jsonb[], p_times timestamptz[],
    p_audit_tenants uuid[], p_audit_ids uuid[], p_audit_times timestamptz[], p_audit_bodies text[],
    p_audit_entity_types text[], p_audit_entity_ids text[],
    p_entry_effects int[], p_entry_ids text[], p_entry_kinds text[], p_entry_pending text[],
    p_entry_bodies text[], p_entry_orders uuid[], p_entry_times timestamptz[],
    p_posting_effects int[], p_posting_entries text[], p_posting_lines int[],
    p_posting_accounts text[], p_posting_currencies text[], p_posting_amounts bigint[],
    p_lock_class int, p_lock_ids int[],
    p_event_effects int[], p_event_ids uuid[], p_event_tenants uuid[], p_event_types text[],
    p_event_sources text[], p_event_subjects text[], p_event_keys text[],
    p_event_partitions int[], p_event_times timestamptz[], p_event_data text[],
    p_event_correlations text[], p_event_causations text[], p_event_traceparents text[],
    p_move_from int[], p_move_count int[],
    p_move_effects int[], p_move_skus text[], p_move_locations text[], p_move_kinds text[],
    p_move_quantities bigint[], p_move_orders uuid[], p_move_times timestamptz[],
    p_move_on_hand bigint[], p_move_reserved bigint[]
) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    effects int := coalesce(cardinality(p_tenants), 0);
    outcomes text[] := array_fill(NULL::text, ARRAY[effects]);
    i int;
    inserted int;
    current_status text;
    current_saga jsonb;
    move int;
    last_move int;
    refused int;
    row_on_hand bigint;
    row_reserved bigint;
BEGIN
    -- The rows that make each effect once. An effect whose row is there was applied before.
    FOR i IN 1 .. effects LOOP
        IF p_once_groups[i] IS NOT NULL THEN
            INSERT INTO inbox (group_name, event_id, applied_at)
                VALUES (p_once_groups[i], p_once_events[i], p_times[i])
                ON CONFLICT DO NOTHING;
        ELSE
            INSERT INTO webhook_deliveries (source, delivery_id, received_at)
                VALUES (p_once_sources[i], p_once_deliveries[i], p_times[i])
                ON CONFLICT DO NOTHING;
        END IF;
        GET DIAGNOSTICS inserted = ROW_COUNT;
        IF inserted = 0 THEN
            outcomes[i] := 'applied';
        END IF;
    END LOOP;

    -- Every lock the batch needs, before any of them is used (see the head of this file).
    PERFORM 1 FROM orders o
        JOIN unnest(p_tenants, p_orders, outcomes) AS e(tenant_id, id, outcome)
          ON o.tenant_id = e.tenant_id AND o.id = e.id
        WHERE e.outcome IS NULL
        ORDER BY o.tenant_id, o.id
        FOR UPDATE OF o;
    PERFORM pg_advisory_xact_lock(p_lock_class, k) FROM unnest(p_lock_ids) AS k;
    PERFORM 1 FROM stock_levels s
        JOIN unnest(p_move_effects, p_move_skus, p_move_locations) AS m(effect, sku, location)
          ON s.tenant_id = p_tenants[m.effect] AND s.sku = m.sku AND s.location = m.location
        WHERE outcomes[m.effect] IS NULL
        ORDER BY s.tenant_id, s.sku COLLATE "C", s.location COLLATE "C"
        FOR UPDATE OF s;

    FOR i IN 1 .. effects LOOP
        CONTINUE WHEN outcomes[i] IS NOT NULL;
        SELECT status, saga INTO current_status, current_saga FROM orders
            WHERE tenant_id = p_tenants[i] AND id = p_orders[i];
        IF NOT FOUND OR current_status <> p_expected_statuses[i]
                OR current_saga <> p_expected_sagas[i] THEN
            outcomes[i] := 'changed';
            CONTINUE;
        END IF;

        -- Check every move against its row (locked above) before changing any, so that an
        -- effect whose row refuses a move leaves every row as it was. Moves of one row are
        -- consecutive: each counts the ones before it.
        refused := NULL;
        last_move := p_move_from[i] + p_move_count[i] - 1;
        FOR move IN p_move_from[i] .. last_move LOOP
            IF move > p_move_from[i] AND p_move_skus[move] = p_move_skus[move - 1]
                    AND p_move_locations[move] = p_move_locations[move - 1] THEN
                row_on_hand := row_on_hand + p_move_on_hand[move - 1];
                row_reserved := row_reserved + p_move_reserved[move - 1];
            ELSE
                SELECT on_hand, reserved INTO row_on_hand, row_reserved FROM stock_levels
                    WHERE tenant_id = p_tenants[i] AND sku = p_move_skus[move]
                      AND location = p_move_locations[move];
                IF NOT FOUND THEN
                    refused := move;
                    EXIT;
                END IF;
            END IF;
            IF row_reserved + p_move_reserved[move] < 0
                    OR row_on_hand + p_move_on_hand[move]
                       - (row_reserved + p_move_reserved[move]) < 0 THEN
                refused := move;
                EXIT;
            END IF;
        END LOOP;
        IF refused IS NOT NULL THEN
            outcomes[i] := CASE WHEN p_move_kinds[refused] = 'reserved' THEN 'taken:'
                                     ELSE 'refused:' END
                                || (refused - p_move_from[i] + 1)::text;
            CONTINUE;
        END IF;
        FOR move IN p_move_from[i] .. last_move LOOP
            UPDATE stock_levels
                SET on_hand = on_hand + p_move_on_hand[move],
                    reserved = reserved + p_move_reserved[move], updated_at = p_move_times[move]
                WHERE tenant_id = p_tenants[i] AND sku = p_move_skus[move]
                  AND location = p_move_locations[move];
        END LOOP;

        UPDATE orders SET status = p_statuses[i], saga = p_sagas[i],
                          updated_at = p_times[i]
            WHERE tenant_id = p_tenants[i] AND id = p_orders[i];
        outcomes[i] := 'written';
    END LOOP;

    -- Take back the rows that make once the effects that stored nothing else.
    DELETE FROM inbox i
        USING unnest(p_once_groups, p_once_events, outcomes) AS e(group_name, event_id, outcome)
        WHERE i.group_name = e.group_name AND i.event_id = e.event_id
          AND e.outcome NOT IN ('written', 'applied');
    DELETE FROM webhook_deliveries w
        USING unnest(p_once_sources, p_once_deliveries, outcomes) AS e(source, delivery_id, outcome)
        WHERE w.source = e.source AND w.delivery_id = e.delivery_id
          AND e.outcome NOT IN ('written', 'applied');

    -- The written effects' rows. Postings before their entries: the entry's trigger checks
    -- that they balance.
    INSERT INTO postings (tenant_id, entry_id, line, account, currency, amount_minor)
        SELECT p_tenants[effect], entry_id, line, account, currency, amount
        FROM unnest(p_posting_effects, p_posting_entries, p_posting_lines, p_posting_accounts,
                    p_posting_currencies, p_posting_amounts)
            AS p(effect, entry_id, line, account, currency, amount)
        WHERE outcomes[effect] = 'written';
    INSERT INTO journal_entries (tenant_id, id, kind, pending_id, body, order_id, created_at)
        SELECT p_tenants[effect], id, kind, pending_id, body::jsonb, order_id, created_at
        FROM unnest(p_entry_effects, p_entry_ids, p_entry_kinds, p_entry_pending, p_entry_bodies,
                    p_entry_orders, p_entry_times)
            AS e(effect, id, kind, pending_id, body, order_id, created_at)
        WHERE outcomes[effect] = 'written';
    INSERT INTO audit_records (tenant_id, id, at, body, entity_type, entity_id)
        SELECT tenant_id, id, at, body::jsonb, entity_type, entity_id
        FROM unnest(p_audit_tenants, p_audit_ids, p_audit_times, p_audit_bodies,
                    p_audit_entity_types, p_audit_entity_ids) WITH ORDINALITY
            AS a(tenant_id, id, at, body, entity_type, entity_id, effect)
        WHERE outcomes[effect] = 'written'
        ORDER BY effect;
    -- Events in the order given, which is the order their `seq` is drawn in, under the
    -- partition-key locks taken above.
    INSERT INTO events (id, tenant_id, type, source, subject, partition_key, partition, time,
                        data, correlation_id, causation_id, traceparent)
        SELECT id, tenant_id, type, source, subject, key, partition, time, data::jsonb,
               correlation_id, causation_id, traceparent
        FROM unnest(p_event_effects, p_event_ids, p_event_tenants, p_event_types,
                    p_event_sources, p_event_subjects, p_event_keys, p_event_partitions,
                    p_event_times, p_event_data, p_event_correlations, p_event_causations,
                    p_event_traceparents) WITH ORDINALITY
            AS e(effect, id, tenant_id, type, source, subject, key, partition, time, data,
                 correlation_id, causation_id, traceparent, ordinal)
        WHERE outcomes[effect] = 'written'
        ORDER BY ordinal;
    INSERT INTO stock_movements (tenant_id, sku, location, kind, quantity, order_id, at)
        SELECT p_tenants[effect], sku, location, kind, quantity, order_id, at
        FROM unnest(p_move_effects, p_move_skus, p_move_locations, p_move_kinds,
                    p_move_quantities, p_move_orders, p_move_times) WITH ORDINALITY
            AS m(effect, sku, location, kind, quantity, order_id, at, ordinal)
        WHERE outcomes[effect] = 'written'
        ORDER BY ordinal;
    RETURN outcomes;
END $$;
