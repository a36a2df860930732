/* etcd_lock--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION etcd_lock" to load this file. \quit

-- Not STRICT: a NULL name must raise an error (22004), not return NULL.
CREATE FUNCTION etcd_lock(name text, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'etcd_lock_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_lock(text, interval) IS
'wait for the etcd lock NAME and hold it for the session; returns its fencing token';

CREATE FUNCTION etcd_try_lock(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_try_lock_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_try_lock(text) IS
'take the etcd lock NAME for the session if it is free; never waits';

CREATE FUNCTION etcd_xact_lock(name text, timeout interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'etcd_xact_lock_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_xact_lock(text, interval) IS
'wait for the etcd lock NAME and hold it until the end of the transaction; returns its fencing token';

CREATE FUNCTION etcd_try_xact_lock(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_try_xact_lock_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_try_xact_lock(text) IS
'take the etcd lock NAME until the end of the transaction if it is free; never waits';

CREATE FUNCTION etcd_unlock(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'etcd_unlock_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_unlock(text) IS
'release one session-level hold of the etcd lock NAME';

CREATE FUNCTION etcd_unlock_all()
RETURNS void
AS 'MODULE_PATHNAME', 'etcd_unlock_all_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_unlock_all() IS
'release every session-level etcd lock of this session';

CREATE FUNCTION etcd_lock_token(name text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'etcd_lock_token_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_lock_token(text) IS
'fencing token of the etcd lock NAME if this session holds it, else NULL';

-- Locks held or awaited by the backends of this instance (shared memory,
-- no etcd call), like pg_locks.
CREATE FUNCTION etcd_locks_internal(
    OUT pid integer, OUT name text, OUT scope text, OUT mode text,
    OUT count integer, OUT token bigint, OUT lease_id text,
    OUT since timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'etcd_locks_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE VIEW etcd_locks AS SELECT * FROM etcd_locks_internal();
GRANT SELECT ON etcd_locks TO PUBLIC;

COMMENT ON VIEW etcd_locks IS
'etcd locks held or awaited by the backends of this instance';

-- What etcd says, across every client of the etcd cluster: per lock name
-- under name_prefix, its holder, the number of waiters and the holder
-- lease's remaining TTL. Holder details (JSON) need pg_read_all_stats.
CREATE FUNCTION etcd_lock_holders(name_prefix text DEFAULT '',
    OUT name text, OUT token bigint, OUT lease_id text, OUT holder jsonb,
    OUT waiters integer, OUT ttl_seconds bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'etcd_lock_holders_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION etcd_lock_holders(text) IS
'holders and waiter counts of etcd locks, read from etcd';

-- Privileges: taking cluster-wide locks is a privilege the DBA grants.
-- Members of etcd_lock_user may lock; everyone may look (etcd_locks,
-- etcd_lock_holders; holder details need pg_read_all_stats).
DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'etcd_lock_user') THEN
		CREATE ROLE etcd_lock_user NOLOGIN;
	END IF;
END $$;

REVOKE EXECUTE ON FUNCTION
    etcd_lock(text, interval), etcd_try_lock(text),
    etcd_xact_lock(text, interval), etcd_try_xact_lock(text),
    etcd_unlock(text), etcd_unlock_all(), etcd_lock_token(text)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    etcd_lock(text, interval), etcd_try_lock(text),
    etcd_xact_lock(text, interval), etcd_try_xact_lock(text),
    etcd_unlock(text), etcd_unlock_all(), etcd_lock_token(text)
TO etcd_lock_user;
