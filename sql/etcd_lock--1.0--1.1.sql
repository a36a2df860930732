/* etcd_lock--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION etcd_lock UPDATE TO '1.1'" to load this file. \quit

-- The instance's etcd_lock state (shared memory, no etcd call): is the
-- worker up, can it reach etcd and since when, which endpoint, how many
-- leases and queued releases, and counters since the server started.
CREATE FUNCTION etcd_lock_status_internal(
    OUT worker_pid integer, OUT etcd_reachable boolean,
    OUT reachable_changed_at timestamptz, OUT endpoint text,
    OUT leases integer, OUT releases_queued integer,
    OUT releases_attempted integer, OUT releases_owed integer,
    OUT requests bigint, OUT failures bigint, OUT failovers bigint,
    OUT leases_lost bigint, OUT authentications bigint,
    OUT locks_not_shown integer)
RETURNS record
AS 'MODULE_PATHNAME', 'etcd_lock_status_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE VIEW etcd_lock_status AS SELECT * FROM etcd_lock_status_internal();
GRANT SELECT ON etcd_lock_status TO PUBLIC;

COMMENT ON VIEW etcd_lock_status IS
'etcd_lock state of this instance: worker, etcd reachability, leases, release queue, counters';

-- etcd_locks gains columns (at the end, so views built on it keep
-- working): state (held, waiting, or lost: the lease lapsed or etcd said
-- it is gone), the owner's database, the full etcd key, the lock mode
-- (exclusive, shared, semaphore) and a semaphore's permits. The column
-- "mode" keeps its 1.0 meaning (held or waiting).
CREATE FUNCTION etcd_locks_internal_v2(
    OUT pid integer, OUT name text, OUT scope text, OUT mode text,
    OUT count integer, OUT token bigint, OUT lease_id text,
    OUT since timestamptz, OUT state text, OUT database text, OUT key text,
    OUT lock_mode text, OUT permits integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'etcd_locks_v2_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE OR REPLACE VIEW etcd_locks AS SELECT * FROM etcd_locks_internal_v2();

-- etcd_lock_holders: one row per holder (a shared lock or a semaphore has
-- several), with its mode and a semaphore's permits. The 1.0 function is
-- renamed, not dropped, so views a user built on it keep working (and the
-- update does not fail on them).
ALTER FUNCTION etcd_lock_holders(text) RENAME TO etcd_lock_holders_v1;
COMMENT ON FUNCTION etcd_lock_holders_v1(text) IS
'etcd_lock_holders of version 1.0 (without mode and permits), kept for objects built on it';
CREATE FUNCTION etcd_lock_holders(name_prefix text DEFAULT '',
    OUT name text, OUT token bigint, OUT lease_id text, OUT holder jsonb,
    OUT waiters integer, OUT ttl_seconds bigint, OUT mode text,
    OUT permits integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'etcd_lock_holders_v2_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_lock_holders(text) IS
'holders (one row each) and waiter counts of etcd locks and semaphores, read from etcd';

-- Shared locks, like pg_advisory_lock_shared: any number of shared
-- holders, or one exclusive holder; FIFO (a shared request behind a
-- waiting exclusive one waits). A session's own keys never block each
-- other.
CREATE FUNCTION etcd_lock_shared(name text, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'etcd_lock_shared_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_lock_shared(text, interval) IS
'take the etcd lock NAME in shared mode for this session, waiting up to TIMEOUT; returns the fencing token';

CREATE FUNCTION etcd_try_lock_shared(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_try_lock_shared_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_try_lock_shared(text) IS
'take the etcd lock NAME in shared mode for this session if no exclusive holder or waiter is ahead';

CREATE FUNCTION etcd_xact_lock_shared(name text, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'etcd_xact_lock_shared_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_xact_lock_shared(text, interval) IS
'take the etcd lock NAME in shared mode until the end of the transaction';

CREATE FUNCTION etcd_try_xact_lock_shared(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_try_xact_lock_shared_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_try_xact_lock_shared(text) IS
'take the etcd lock NAME in shared mode until the end of the transaction, without waiting';

CREATE FUNCTION etcd_unlock_shared(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_unlock_shared_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_unlock_shared(text) IS
'release one session-level shared hold of the etcd lock NAME';

-- Semaphores: one of PERMITS permits of NAME; the first PERMITS keys in
-- etcd's create order hold. Every client of a name must give the same
-- PERMITS; a name is a lock or a semaphore, never both.
CREATE FUNCTION etcd_semaphore(name text, permits integer, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'etcd_semaphore_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_semaphore(text, integer, interval) IS
'take one of PERMITS permits of the etcd semaphore NAME for this session, waiting up to TIMEOUT; returns the fencing token';

CREATE FUNCTION etcd_try_semaphore(name text, permits integer)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_try_semaphore_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_try_semaphore(text, integer) IS
'take a permit of the etcd semaphore NAME for this session if one is free';

CREATE FUNCTION etcd_xact_semaphore(name text, permits integer, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'etcd_xact_semaphore_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_xact_semaphore(text, integer, interval) IS
'take a permit of the etcd semaphore NAME until the end of the transaction';

CREATE FUNCTION etcd_try_xact_semaphore(name text, permits integer)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_try_xact_semaphore_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_try_xact_semaphore(text, integer) IS
'take a permit of the etcd semaphore NAME until the end of the transaction, if one is free';

CREATE FUNCTION etcd_unlock_semaphore(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_unlock_semaphore_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_unlock_semaphore(text) IS
'release one session-level hold of a permit of the etcd semaphore NAME';

-- Several names at once, all or none, without deadlock against another
-- multi-lock over an overlapping set: the keys go to etcd in one txn (one
-- create revision, so the older multi-lock is ahead on every name they
-- share), then the call waits until all hold, with one timeout for the
-- whole. MODES: 'exclusive' (the default) or 'shared', one per name. At
-- most 128 names (etcd's --max-txn-ops). Each name is then held like a
-- single lock (etcd_unlock / etcd_unlock_shared, or transaction end).
CREATE FUNCTION etcd_lock_many(names text[], timeout interval DEFAULT NULL,
    modes text[] DEFAULT NULL)
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'etcd_lock_many_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_lock_many(text[], interval, text[]) IS
'take all the etcd locks NAMES for this session, or none, waiting up to TIMEOUT; returns their fencing tokens';

CREATE FUNCTION etcd_try_lock_many(names text[], modes text[] DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_try_lock_many_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_try_lock_many(text[], text[]) IS
'take all the etcd locks NAMES for this session if all are free now, else none';

CREATE FUNCTION etcd_xact_lock_many(names text[], timeout interval DEFAULT NULL,
    modes text[] DEFAULT NULL)
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'etcd_xact_lock_many_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_xact_lock_many(text[], interval, text[]) IS
'take all the etcd locks NAMES until the end of the transaction, or none';

CREATE FUNCTION etcd_try_xact_lock_many(names text[], modes text[] DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_try_xact_lock_many_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_try_xact_lock_many(text[], text[]) IS
'take all the etcd locks NAMES until the end of the transaction if all are free now, else none';

-- Leader election, on the keys of etcd's Go concurrency.Election (a
-- name's candidates queue like a lock's; the oldest leads, with its
-- value): Go and SQL candidates of one name see each other. Session scope:
-- leadership lasts until etcd_resign, session end or lease loss
-- (etcd_lock.on_lease_loss applies). A name is a lock, a semaphore or an
-- election.
CREATE FUNCTION etcd_campaign(name text, value text, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'etcd_campaign_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_campaign(text, text, interval) IS
'wait until this session leads the etcd election NAME with VALUE (up to TIMEOUT); returns the fencing token';

CREATE FUNCTION etcd_try_campaign(name text, value text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_try_campaign_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_try_campaign(text, text) IS
'lead the etcd election NAME with VALUE if nobody does, else nothing';

CREATE FUNCTION etcd_proclaim(name text, value text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'etcd_proclaim_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_proclaim(text, text) IS
'as the leader of the etcd election NAME, announce VALUE (the token stays); returns the new revision';

CREATE FUNCTION etcd_resign(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_resign_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_resign(text) IS
'give up leading the etcd election NAME';

-- Readable by any role, like etcd_lock_holders.
CREATE FUNCTION etcd_leader(name text, OUT value text, OUT token bigint,
    OUT lease_id text, OUT revision bigint, OUT is_mine boolean)
RETURNS record
AS 'MODULE_PATHNAME', 'etcd_leader_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_leader(text) IS
'the leader of the etcd election NAME: value, token, lease, revision (changes when it proclaims), whether it is this session';

CREATE FUNCTION etcd_observe(name text, last_revision bigint DEFAULT 0,
    timeout interval DEFAULT NULL, OUT value text, OUT token bigint,
    OUT lease_id text, OUT revision bigint, OUT is_mine boolean)
RETURNS record
AS 'MODULE_PATHNAME', 'etcd_observe_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_observe(text, bigint, interval) IS
'wait until the leader of the etcd election NAME or its value differs from LAST_REVISION (or TIMEOUT passes); returns the leader';

REVOKE EXECUTE ON FUNCTION
    etcd_lock_shared(text, interval), etcd_try_lock_shared(text),
    etcd_xact_lock_shared(text, interval), etcd_try_xact_lock_shared(text),
    etcd_unlock_shared(text),
    etcd_semaphore(text, integer, interval), etcd_try_semaphore(text, integer),
    etcd_xact_semaphore(text, integer, interval), etcd_try_xact_semaphore(text, integer),
    etcd_unlock_semaphore(text),
    etcd_lock_many(text[], interval, text[]), etcd_try_lock_many(text[], text[]),
    etcd_xact_lock_many(text[], interval, text[]), etcd_try_xact_lock_many(text[], text[]),
    etcd_campaign(text, text, interval), etcd_try_campaign(text, text),
    etcd_proclaim(text, text), etcd_resign(text)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    etcd_lock_shared(text, interval), etcd_try_lock_shared(text),
    etcd_xact_lock_shared(text, interval), etcd_try_xact_lock_shared(text),
    etcd_unlock_shared(text),
    etcd_semaphore(text, integer, interval), etcd_try_semaphore(text, integer),
    etcd_xact_semaphore(text, integer, interval), etcd_try_xact_semaphore(text, integer),
    etcd_unlock_semaphore(text),
    etcd_lock_many(text[], interval, text[]), etcd_try_lock_many(text[], text[]),
    etcd_xact_lock_many(text[], interval, text[]), etcd_try_xact_lock_many(text[], text[]),
    etcd_campaign(text, text, interval), etcd_try_campaign(text, text),
    etcd_proclaim(text, text), etcd_resign(text)
TO etcd_lock_user;
