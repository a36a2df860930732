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
