/* etcd_lock--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION etcd_lock UPDATE TO '1.2'" to load this file. \quit

-- The etcd key range a lock on NAME takes: etcd_lock.prefix, the name and a
-- slash — the name etcdctl (`etcdctl lock <key without the slash>`) and
-- etcd's Go client (concurrency.NewMutex(session, ...)) must use to exclude
-- the SQL holders. Looking only: everyone may call it.
CREATE FUNCTION etcd_lock_key(name text)
RETURNS text
AS 'MODULE_PATHNAME', 'etcd_lock_key_sql'
LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION etcd_lock_key(text) IS
'the etcd key range of the lock NAME under etcd_lock.prefix (what etcdctl and Go clients name, with a trailing slash)';

-- etcd_lock_status gains two columns (at the end, so views built on it keep
-- working): last_error, the worker's last failed request (why etcd was
-- unreachable, or what it answered), and auth_error, why the last
-- authentication failed (NULL once one succeeds) - a reload whose new
-- credentials etcd refuses shows here at once.
CREATE FUNCTION etcd_lock_status_internal_v2(
    OUT worker_pid integer, OUT etcd_reachable boolean,
    OUT reachable_changed_at timestamptz, OUT endpoint text,
    OUT leases integer, OUT releases_queued integer,
    OUT releases_attempted integer, OUT releases_owed integer,
    OUT requests bigint, OUT failures bigint, OUT failovers bigint,
    OUT leases_lost bigint, OUT authentications bigint,
    OUT locks_not_shown integer, OUT last_error text, OUT auth_error text)
RETURNS record
AS 'MODULE_PATHNAME', 'etcd_lock_status_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE OR REPLACE VIEW etcd_lock_status AS SELECT * FROM etcd_lock_status_internal_v2();
DROP FUNCTION etcd_lock_status_internal();
