-- The SQL surface of etcd_lock against a real etcd (one session).
CREATE EXTENSION etcd_lock;

-- etcd_lock returns a positive fencing token; re-entrant acquisitions
-- return the same token and need as many unlocks.
SELECT etcd_lock('/regress/a') AS t1 \gset
SELECT :t1 > 0 AS got_token;
SELECT etcd_lock('/regress/a') = :t1 AS reentrant_same_token;
SELECT etcd_lock_token('/regress/a') = :t1 AS token_matches;
SELECT etcd_unlock('/regress/a') AS first_unlock;
SELECT etcd_lock_token('/regress/a') = :t1 AS still_held_after_one_unlock;
SELECT etcd_unlock('/regress/a') AS second_unlock;
SELECT etcd_lock_token('/regress/a') IS NULL AS released;
-- unlocking what we do not hold: false with a WARNING, like pg_advisory_unlock
SELECT etcd_unlock('/regress/a') AS unlock_not_held;

-- tokens strictly increase across successive holders of a name
SELECT etcd_lock('/regress/a') > :t1 AS token_increases;
SELECT etcd_unlock('/regress/a');

-- a timeout on a free lock does not matter
SELECT etcd_lock('/regress/t', '1 second') > 0 AS with_timeout;
SELECT etcd_lock('/regress/t', '0') > 0 AS zero_timeout_reentrant;
SELECT etcd_unlock('/regress/t') AND etcd_unlock('/regress/t') AS unlocked_twice;

-- try-lock
SELECT etcd_try_lock('/regress/b') AS try_free;
SELECT etcd_try_lock('/regress/b') AS try_reentrant;
SELECT etcd_lock_token('/regress/b') > 0 AS try_has_token;
SELECT etcd_unlock('/regress/b'), etcd_unlock('/regress/b');

-- etcd_unlock_all releases every session lock at once
SELECT etcd_lock('/regress/u1') > 0, etcd_lock('/regress/u2') > 0, etcd_lock('/regress/u2') > 0;
SELECT etcd_unlock_all();
SELECT etcd_lock_token('/regress/u1') IS NULL AS u1_free, etcd_lock_token('/regress/u2') IS NULL AS u2_free;

-- odd but valid names: unicode, slashes, dots, spaces, 1024 bytes
SELECT etcd_lock('/jobs/../etc') > 0 AS dots, etcd_lock('späße ☃') > 0 AS unicode,
       etcd_lock('with space') > 0 AS spaces, etcd_lock(repeat('n', 1024)) > 0 AS longest;
SELECT etcd_unlock_all();

-- etcd_locks shows this session's holds, from shared memory
SELECT etcd_lock('/regress/v') AS tv \gset
SELECT etcd_lock('/regress/v') = :tv AS reentrant;
BEGIN;
SELECT etcd_xact_lock('/regress/v') = :tv AS xact_on_same_key;
SELECT name, scope, mode, count, token = :tv AS token_ok, lease_id ~ '^[0-9a-f]+$' AS hex_lease
  FROM etcd_locks WHERE pid = pg_backend_pid();
COMMIT;
SELECT name, scope, mode, count FROM etcd_locks WHERE pid = pg_backend_pid();
-- and etcd agrees: one key, held by us, nobody waiting
SELECT name, token = :tv AS token_ok, holder->>'pid' = pg_backend_pid()::text AS us,
       waiters, ttl_seconds > 0 AS live
  FROM etcd_lock_holders('/regress/');
SELECT etcd_unlock_all();
SELECT count(*) AS left_in_view FROM etcd_locks WHERE pid = pg_backend_pid();
SELECT count(*) AS left_in_etcd FROM etcd_lock_holders('/regress/');

-- usable in a read-only transaction
BEGIN READ ONLY;
SELECT etcd_xact_lock('/regress/ro') > 0 AS in_read_only;
COMMIT;

-- every function: VOLATILE, PARALLEL UNSAFE, not STRICT (NULL raises)
SELECT p.proname, p.pronargs,
       p.provolatile, p.proparallel, p.proisstrict
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'etcd_lock'
ORDER BY 1, 2;

-- DISCARD ALL (a pooler's reset query) releases session-level locks, as it
-- does advisory locks; etcd agrees
SELECT etcd_lock('/regress/pool') > 0 AS locked;
SELECT etcd_lock('/regress/pool') > 0 AS locked_twice;
DISCARD ALL;
SELECT etcd_lock_token('/regress/pool') IS NULL AS released_by_discard;
SELECT count(*) AS left_in_view FROM etcd_locks WHERE pid = pg_backend_pid();
SELECT count(*) AS left_in_etcd FROM etcd_lock_holders('/regress/pool');

-- etcd_lock.allow_session_locks = off (for clients behind a transaction
-- pooler): session-level lock functions refuse, xact ones work
CREATE FUNCTION scope_error(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN others THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SET etcd_lock.allow_session_locks = off;
SELECT scope_error($$SELECT etcd_lock('/regress/s')$$);
SELECT scope_error($$SELECT etcd_try_lock('/regress/s')$$);
BEGIN;
SELECT etcd_xact_lock('/regress/s') > 0 AS xact_ok, etcd_try_xact_lock('/regress/s2') AS try_xact_ok;
COMMIT;
-- the error's HINT names the transaction-level form of what was called,
-- and for a campaign (which has none) where elections can be used
\set VERBOSITY default
SELECT etcd_lock_shared('/regress/s');
SELECT etcd_semaphore('/regress/s', 2);
SELECT etcd_lock_many(ARRAY['/regress/s']);
SELECT etcd_campaign('/regress/s', 'v');
RESET etcd_lock.allow_session_locks;

-- the instance's state in one row
SELECT worker_pid > 0 AS worker, etcd_reachable, endpoint <> '' AS has_endpoint,
       releases_queued >= 0 AS queue, requests > 0 AS requests
  FROM etcd_lock_status;

-- 1.2: the last failed request and the last authentication error (none:
-- no authentication is configured here)
SELECT auth_error IS NULL AS no_auth_error, last_error IS DISTINCT FROM '' AS last_error_null_or_set
  FROM etcd_lock_status;

-- etcd_lock_stats (1.3): what the instance's locks cost etcd, since the
-- last etcd_lock_stats_reset(); one lock and one unlock are one acquire and
-- one release txn, each its own request here (nobody to batch with)
SELECT etcd_lock_stats_reset();
SELECT acquire_txns, release_txns, txn_requests, batches, locks_acquired,
       latency_p50_ms IS NULL AS no_latency_yet, stats_reset > now() - interval '1 minute' AS reset_now
  FROM etcd_lock_stats;
SELECT etcd_lock('/regress/stats') > 0 AS locked;
SELECT etcd_lock('/regress/stats') > 0 AS reentered_without_etcd;
SELECT etcd_try_lock('/regress/stats_other') AS tried;
SELECT etcd_unlock('/regress/stats') AND etcd_unlock('/regress/stats') AS unlocked;
SELECT etcd_unlock('/regress/stats_other');
SELECT acquire_txns, release_txns, txn_requests, batches, locks_acquired, locks_busy,
       lock_timeouts, lock_errors, waits, max_txn_ops,
       latency_p50_ms > 0 AND latency_p50_ms <= latency_p99_ms AS latency_ok
  FROM etcd_lock_stats;
SELECT has_table_privilege('public', 'etcd_lock_stats', 'SELECT') AS public_may_read,
       has_function_privilege('public', 'etcd_lock_stats_reset()', 'EXECUTE') AS public_may_reset;

-- etcd_locks (1.1): state, the owner's database and the full etcd key
SELECT etcd_lock('/regress/cols') > 0 AS locked;
SELECT name, state, database = current_database() AS db_ok,
       key = '/regress/cols/' || lease_id AS key_ok
  FROM etcd_locks WHERE pid = pg_backend_pid();
SELECT etcd_unlock('/regress/cols');
SELECT locks_not_shown FROM etcd_lock_status;

-- names are independent: a lock on a nested name neither blocks nor is
-- blocked by its parent (the parent's queue is its direct lock keys only)
SELECT etcd_lock('/regress/jobs/nightly') > 0 AS nested_locked;
SELECT etcd_try_lock('/regress/jobs') AS parent_free_while_child_held;
SELECT etcd_try_lock('/regress/jobs/weekly') AS sibling_free;
SELECT name FROM etcd_lock_holders('/regress/jobs') ORDER BY 1;
SELECT etcd_unlock_all();

-- etcd_lock_key (1.2): the key range of a name under the prefix, what
-- etcdctl and Go clients name; its key in etcd_locks starts with it
SELECT etcd_lock_key('/jobs') AS key_range;
SET etcd_lock.prefix = '/etcd_lock';
SELECT etcd_lock_key('/jobs') AS key_range;
SELECT etcd_lock('/regress/key') > 0 AS locked;
SELECT starts_with(key, etcd_lock_key('/regress/key')) AS key_in_range FROM etcd_locks WHERE pid = pg_backend_pid();
SELECT etcd_unlock('/regress/key');
RESET etcd_lock.prefix;
SELECT etcd_lock_key(NULL);
SELECT etcd_lock_key('');
