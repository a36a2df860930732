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
    OUT leases_lost bigint, OUT authentications bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'etcd_lock_status_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE VIEW etcd_lock_status AS SELECT * FROM etcd_lock_status_internal();
GRANT SELECT ON etcd_lock_status TO PUBLIC;

COMMENT ON VIEW etcd_lock_status IS
'etcd_lock state of this instance: worker, etcd reachability, leases, release queue, counters';
