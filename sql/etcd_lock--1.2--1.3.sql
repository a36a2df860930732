/* etcd_lock--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION etcd_lock UPDATE TO '1.3'" to load this file. \quit

-- What this instance's locks cost etcd, in the style of pg_stat_statements
-- (one row, from shared memory, no etcd call), since etcd_lock_stats_reset():
-- the acquire and release txns and the etcd requests they took (with group
-- commit several sessions' txns go in one request: batches, their sizes),
-- lock calls by outcome, waits behind another holder and the handoffs that
-- ended them, the instance's HTTP requests, failures, failovers and lost
-- leases, and the txns' latency percentiles (ms, within 25 %).
CREATE FUNCTION etcd_lock_stats_internal(
    OUT acquire_txns bigint, OUT release_txns bigint, OUT txn_requests bigint,
    OUT batches bigint, OUT batch_members bigint, OUT mean_batch float8,
    OUT max_batch integer, OUT resent_alone bigint, OUT max_txn_ops integer,
    OUT locks_acquired bigint, OUT locks_busy bigint, OUT lock_timeouts bigint,
    OUT lock_errors bigint, OUT waits bigint, OUT handoffs bigint,
    OUT http_requests bigint, OUT http_failures bigint, OUT failovers bigint,
    OUT leases_lost bigint, OUT latency_p50_ms float8, OUT latency_p90_ms float8,
    OUT latency_p99_ms float8, OUT stats_reset timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'etcd_lock_stats_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE VIEW etcd_lock_stats AS SELECT * FROM etcd_lock_stats_internal();
GRANT SELECT ON etcd_lock_stats TO PUBLIC;

COMMENT ON VIEW etcd_lock_stats IS
'what this instance''s etcd locks cost etcd since etcd_lock_stats_reset(): txns, etcd requests, group commit batches, lock calls by outcome, latency';

-- Like pg_stat_statements_reset: superusers, or roles granted EXECUTE.
CREATE FUNCTION etcd_lock_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'etcd_lock_stats_reset_sql'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION etcd_lock_stats_reset() FROM PUBLIC;

COMMENT ON FUNCTION etcd_lock_stats_reset() IS
'etcd_lock_stats counts from now';
