-- Shared locks and semaphores (1.1): the SQL surface, argument checks and
-- SQLSTATEs, re-entrancy, views. Cross-session behaviour: t/017.
-- sqlstate_of(q): from etcd_lock_errors, which runs before this file

-- bad input: 22004 for NULL, 22023 for out-of-range values
SELECT sqlstate_of($$SELECT etcd_lock_shared(NULL)$$);
SELECT sqlstate_of($$SELECT etcd_try_lock_shared('')$$);
SELECT sqlstate_of($$SELECT etcd_xact_lock_shared('/m', '-1 s')$$);
SELECT sqlstate_of($$SELECT etcd_unlock_shared(NULL)$$);
SELECT sqlstate_of($$SELECT etcd_semaphore('/s', NULL)$$);
SELECT sqlstate_of($$SELECT etcd_semaphore('/s', 0)$$);
SELECT sqlstate_of($$SELECT etcd_try_semaphore('/s', 1001)$$);
SELECT sqlstate_of($$SELECT etcd_xact_semaphore('/s', 3, '-1 s')$$);
SELECT sqlstate_of($$SELECT etcd_try_xact_semaphore(NULL, 3)$$);
SELECT sqlstate_of($$SELECT etcd_unlock_semaphore('')$$);
SELECT count(*) AS nothing_taken FROM etcd_locks WHERE pid = pg_backend_pid();

-- shared: re-entrant; this session's own keys never block each other, so
-- it may hold exclusive beside shared (as advisory locks allow)
SELECT etcd_lock_shared('/m') > 0 AS shared_token;
SELECT etcd_try_lock_shared('/m');
SELECT etcd_try_lock('/m');
SELECT etcd_lock('/m', '1 s') > 0 AS exclusive_too;
SELECT name, mode, lock_mode, scope, count, permits,
       key ~ '^/m/[0-9a-f]+(\.shared)?$' AS key_ok
FROM etcd_locks WHERE pid = pg_backend_pid() ORDER BY lock_mode;
SELECT name, mode, waiters, permits, holder IS NOT NULL AS has_holder
FROM etcd_lock_holders('/m') ORDER BY mode;
SELECT etcd_lock_token('/m') = token AS token_is_exclusive_first
FROM etcd_locks WHERE pid = pg_backend_pid() AND lock_mode = 'exclusive';
SELECT etcd_unlock_shared('/m'), etcd_unlock_shared('/m');
SELECT etcd_unlock_shared('/m');	-- no more: a WARNING, false
SELECT etcd_unlock('/m'), etcd_unlock('/m');
SELECT count(*) AS none_left FROM etcd_lock_holders('/m');

-- transaction scope: released at COMMIT and at ROLLBACK
BEGIN;
SELECT etcd_xact_lock_shared('/mx') > 0 AS xact_shared;
SELECT etcd_try_xact_lock_shared('/mx');
SELECT lock_mode, scope, count FROM etcd_locks WHERE name = '/mx';
COMMIT;
SELECT count(*) AS released_at_commit FROM etcd_locks WHERE name = '/mx';
BEGIN;
SELECT etcd_xact_semaphore('/sx', 2) > 0 AS xact_permit;
SELECT etcd_try_xact_semaphore('/sx', 2);
ROLLBACK;
SELECT count(*) AS released_at_rollback FROM etcd_lock_holders('/sx');
-- an aborted subtransaction undoes what it took
BEGIN;
SAVEPOINT a;
SELECT etcd_xact_lock_shared('/msub') > 0 AS in_subxact;
ROLLBACK TO a;
SELECT count(*) AS undone FROM etcd_locks WHERE name = '/msub';
COMMIT;

-- semaphores: re-entrant with the same N; another N is an error (22023);
-- a name is a lock or a semaphore (42809)
SELECT etcd_semaphore('/s', 2) > 0 AS permit;
SELECT etcd_try_semaphore('/s', 2);
SELECT sqlstate_of($$SELECT etcd_semaphore('/s', 3)$$);
SELECT sqlstate_of($$SELECT etcd_lock('/s', '1 s')$$);
SELECT sqlstate_of($$SELECT etcd_try_lock_shared('/s')$$);
SELECT name, mode, lock_mode, count, permits,
       key ~ '^/s/[0-9a-f]+\.sem2$' AS key_ok
FROM etcd_locks WHERE pid = pg_backend_pid();
SELECT name, mode, waiters, permits FROM etcd_lock_holders('/s');
SELECT etcd_lock_token('/s') > 0 AS permit_token;
SELECT etcd_unlock_semaphore('/s'), etcd_unlock_semaphore('/s');
SELECT etcd_unlock_semaphore('/s');	-- no more: a WARNING, false
-- the failed calls above left nothing in etcd
SELECT count(*) AS none_left FROM etcd_lock_holders('/s');
SELECT etcd_lock('/l') > 0 AS lock_taken;
SELECT sqlstate_of($$SELECT etcd_semaphore('/l', 2, '1 s')$$);
SELECT sqlstate_of($$SELECT etcd_try_semaphore('/l', 2)$$);
SELECT etcd_unlock('/l');
SELECT count(*) AS none_left FROM etcd_lock_holders('/l');

-- privileges: like the exclusive functions, granted to etcd_lock_user only
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_may,
       has_function_privilege('etcd_lock_user', p.oid, 'EXECUTE') AS role_may
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'etcd_lock'
WHERE p.proname ~ '(shared|semaphore)' ORDER BY 1;


-- multi-locks: all or none, one create revision for the keys put together
SELECT sqlstate_of($$SELECT etcd_lock_many(NULL)$$);
SELECT sqlstate_of($$SELECT etcd_lock_many('{}')$$);
SELECT sqlstate_of($$SELECT etcd_lock_many(ARRAY['/a', NULL])$$);
SELECT sqlstate_of($$SELECT etcd_lock_many(ARRAY['/a', ''])$$);
SELECT sqlstate_of($$SELECT etcd_lock_many(ARRAY['/a', '/a'])$$);
SELECT sqlstate_of($$SELECT etcd_lock_many(ARRAY['/a', '/b'], NULL, ARRAY['shared'])$$);
SELECT sqlstate_of($$SELECT etcd_lock_many(ARRAY['/a'], NULL, ARRAY['reader'])$$);
SELECT sqlstate_of($$SELECT etcd_xact_lock_many(ARRAY['/a'], '-1 s')$$);
SELECT sqlstate_of($$SELECT etcd_try_lock_many(ARRAY(SELECT '/n' || g FROM generate_series(1, 129) g))$$);
SELECT count(*) AS nothing_taken FROM etcd_locks WHERE pid = pg_backend_pid();
SELECT t[1] = t[2] AS one_revision, t[1] > 0 AS positive
FROM etcd_lock_many(ARRAY['/acct/1', '/acct/2']) t;
-- a name held already is re-entered (its own token); a name in two modes is two keys
SELECT t[1] = etcd_lock_token('/acct/1') AS reentered, t[2] > t[1] AS new_key_newer
FROM etcd_lock_many(ARRAY['/acct/1', '/acct/3'], '1 s', ARRAY['exclusive', 'shared']) t;
SELECT name, lock_mode, count FROM etcd_locks WHERE pid = pg_backend_pid() ORDER BY 1, 2;
SELECT etcd_try_lock_many(ARRAY['/acct/4', '/acct/4'], ARRAY['exclusive', 'shared']);
SELECT etcd_unlock_all();
-- transaction scope; 128 names (the most one txn allows) at once
BEGIN;
SELECT cardinality(etcd_xact_lock_many(ARRAY(SELECT '/n' || g FROM generate_series(1, 128) g))) AS taken;
SELECT count(*) AS held FROM etcd_locks WHERE pid = pg_backend_pid();
SELECT etcd_try_xact_lock_many(ARRAY['/n1', '/n200']);
COMMIT;
SELECT count(*) AS released_at_commit FROM etcd_lock_holders('/n');

-- elections (the keys of etcd's Go concurrency.Election)
SELECT sqlstate_of($$SELECT etcd_campaign('/e', NULL)$$);
SELECT sqlstate_of($$SELECT etcd_campaign(NULL, 'a')$$);
SELECT sqlstate_of($$SELECT etcd_campaign('/e', repeat('v', 65537))$$);
SELECT sqlstate_of($$SELECT etcd_campaign('/e', 'a', '-1 s')$$);
SELECT sqlstate_of($$SELECT etcd_proclaim('/e', 'a')$$);
SELECT value, token, is_mine FROM etcd_leader('/e');
SELECT etcd_campaign('/e', 'node-a') > 0 AS leading;
SELECT value, token = etcd_lock_token('/e') AS token_ok, is_mine,
       revision = token AS unproclaimed FROM etcd_leader('/e');
SELECT etcd_proclaim('/e', 'node-a, v2') > token AS newer_revision FROM etcd_leader('/e');
SELECT value, revision > token AS proclaimed, is_mine FROM etcd_leader('/e');
-- campaigning again as the leader proclaims, same token
SELECT etcd_campaign('/e', 'node-a, v3') = token AS same_token FROM etcd_leader('/e');
SELECT value FROM etcd_leader('/e');
-- observe: at once when the caller's revision is stale; else after the timeout, unchanged
SELECT value, is_mine FROM etcd_observe('/e', 0);
SELECT o.revision = l.revision AS unchanged FROM etcd_leader('/e') l,
       etcd_observe('/e', l.revision, '100 ms') o;
SELECT name, lock_mode, scope, count FROM etcd_locks WHERE pid = pg_backend_pid();
-- one session's lock and campaign on one name would share a key: refused
SELECT sqlstate_of($$SELECT etcd_lock('/e')$$);
SELECT etcd_try_campaign('/e', 'again');
SELECT etcd_resign('/e');
SELECT etcd_resign('/e');	-- not campaigning: a WARNING, false
SELECT value IS NULL AND token IS NULL AS no_leader, is_mine FROM etcd_leader('/e');
SELECT etcd_try_campaign('/e2', 'b');
SELECT etcd_unlock_all();
SELECT value IS NULL AS resigned_at_unlock_all FROM etcd_leader('/e2');
-- elections are session-scoped; any role may read the leader
SELECT has_function_privilege('public', 'etcd_leader(text)', 'EXECUTE') AS public_reads,
       has_function_privilege('public', 'etcd_observe(text, bigint, interval)', 'EXECUTE') AS public_observes,
       has_function_privilege('public', 'etcd_campaign(text, text, interval)', 'EXECUTE') AS public_campaigns;
