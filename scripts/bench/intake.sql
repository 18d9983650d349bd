-- pgbench: the writes of one order intake, as Tally's PostgreSQL store issues them for
-- POST /v1/orders (see crates/store/src/command.rs and crates/store/src/postgres/tx.rs):
-- the read-only replay check, then one transaction with the idempotency-key lock and lookup,
-- the catalog read, the order row, the partition-key lock, the outbox event, the audit record
-- and the stored response. Variables: tenant (a tenant id with SKU TEE-M in its catalog). Run with -M prepared.
\set n random(1, 9000000000000000000)
SELECT fingerprint FROM idempotency_records WHERE tenant_id = :tenant AND key = 'pgbench-' || :n::text;
BEGIN;
SELECT pg_try_advisory_xact_lock(1952514050, hashtext(:tenant::text || '/pgbench-' || :n::text));
SELECT fingerprint, status_code, location, response_body, expires_at FROM idempotency_records WHERE tenant_id = :tenant AND key = 'pgbench-' || :n::text;
SELECT sku, prices FROM variants WHERE tenant_id = :tenant AND sku = ANY(ARRAY['TEE-M']);
INSERT INTO orders (tenant_id, id, channel, customer_id, customer_email, currency, total_minor, status, lines, shipping_address, created_at, updated_at)
  VALUES (:tenant, gen_random_uuid(), 'web', 'bench-customer', 'bench@example.com', 'USD', 3998, 'placed',
          jsonb_build_array(jsonb_build_object('sku', 'TEE-M', 'quantity', 2, 'unit_price_minor', 1999, 'line_total_minor', 3998)),
          jsonb_build_object('name', 'Ada Lovelace', 'line1', '12 St James Sq', 'line2', NULL, 'city', 'London', 'region', NULL, 'postal_code', 'SW1Y 4JH', 'country', 'GB'),
          now(), now());
SELECT pg_advisory_xact_lock(1952514049, k) FROM unnest(ARRAY[hashtext('pgbench-' || :n::text)]) AS k;
INSERT INTO events (id, tenant_id, type, source, subject, partition_key, partition, time, data, correlation_id, causation_id, traceparent)
  VALUES (gen_random_uuid(), :tenant, 'tally.order.placed.v1', '/tally/order', 'pgbench-' || :n::text, 'pgbench-' || :n::text, 3, now(),
          jsonb_build_object('id', gen_random_uuid(), 'channel', 'web', 'customer', jsonb_build_object('id', 'bench-customer', 'email', 'bench@example.com'),
                             'lines', jsonb_build_array(jsonb_build_object('sku', 'TEE-M', 'quantity', 2, 'unit_price_minor', 1999, 'line_total_minor', 3998)),
                             'currency', 'USD', 'total_minor', 3998, 'status', 'placed'),
          'request-id', 'idempotency-key=pgbench-' || :n::text, NULL);
INSERT INTO idempotency_records (tenant_id, key, fingerprint, status_code, location, response_body, created_at, expires_at)
  VALUES (:tenant, 'pgbench-' || :n::text, sha256(convert_to(:n::text, 'UTF8')), 201, '/v1/orders/x', convert_to(repeat('x', 600), 'UTF8'), now(), now() + interval '24 hours');
INSERT INTO audit_records (tenant_id, id, at, body, entity_type, entity_id)
  VALUES (:tenant, gen_random_uuid(), now(),
          jsonb_build_object('action', 'order.placed', 'actor', jsonb_build_object('kind', 'api_key', 'id', gen_random_uuid()),
                             'cause', jsonb_build_object('request_id', 'request-id', 'idempotency_key', 'pgbench-' || :n::text),
                             'entity', jsonb_build_object('type', 'order', 'id', 'pgbench-' || :n::text), 'change', jsonb_build_object('status', 'placed')),
          'order', 'pgbench-' || :n::text);
COMMIT;
