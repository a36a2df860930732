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
-- it is gone), the owner's database, and the full etcd key.
CREATE FUNCTION etcd_locks_internal_v2(
    OUT pid integer, OUT name text, OUT scope text, OUT mode text,
    OUT count integer, OUT token bigint, OUT lease_id text,
    OUT since timestamptz, OUT state text, OUT database text, OUT key text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'etcd_locks_v2_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE OR REPLACE VIEW etcd_locks AS SELECT * FROM etcd_locks_internal_v2();
