-- Bad input gets a clear error with the right SQLSTATE, never a crash.
CREATE FUNCTION sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN others THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

SELECT sqlstate_of($$SELECT etcd_lock(NULL)$$);
SELECT sqlstate_of($$SELECT etcd_try_lock(NULL)$$);
SELECT sqlstate_of($$SELECT etcd_xact_lock(NULL)$$);
SELECT sqlstate_of($$SELECT etcd_try_xact_lock(NULL)$$);
SELECT sqlstate_of($$SELECT etcd_unlock(NULL)$$);
SELECT sqlstate_of($$SELECT etcd_lock_token(NULL)$$);
SELECT sqlstate_of($$SELECT etcd_lock('')$$);
SELECT sqlstate_of($$SELECT etcd_try_lock('')$$);
SELECT sqlstate_of($$SELECT etcd_unlock('')$$);
SELECT sqlstate_of($$SELECT etcd_lock(repeat('x', 1025))$$);
SELECT sqlstate_of($$SELECT etcd_xact_lock(repeat('é', 513))$$);
SELECT sqlstate_of($$SELECT etcd_lock('/r', '-1 second')$$);
SELECT sqlstate_of($$SELECT etcd_xact_lock('/r', '-1 day')$$);
-- none of these took a lock
SELECT etcd_lock_token('/r') IS NULL AS nothing_taken;

-- malformed endpoints are refused when set, with a reason (22023)
ALTER SYSTEM SET etcd_lock.endpoints = '127.0.0.1:2379';
ALTER SYSTEM SET etcd_lock.endpoints = 'http://127.0.0.1:99999';
ALTER SYSTEM SET etcd_lock.endpoints = 'http://127.0.0.1:';
ALTER SYSTEM SET etcd_lock.endpoints = '';
ALTER SYSTEM SET etcd_lock.endpoints = ' , ';
ALTER SYSTEM SET etcd_lock.endpoints = 'ftp://127.0.0.1:2379';
-- endpoints and lease_ttl are server-wide (the worker must agree with us)
SELECT sqlstate_of($$SET etcd_lock.endpoints = 'http://127.0.0.1:2379'$$);
SELECT sqlstate_of($$SET etcd_lock.lease_ttl = 5$$);
-- (the wording is PostgreSQL's own and differs between versions)
SELECT left(e, 5) AS sqlstate, e LIKE '%"etcd_lock.request_timeout"%' AS names_it FROM sqlstate_of($$SET etcd_lock.request_timeout = 10$$) e;
-- the prefix reserved: unknown etcd_lock.* settings are refused
SELECT sqlstate_of($$SET etcd_lock.no_such_setting = 1$$);
-- privileges: the prefix is superuser-only, credentials are hidden, and
-- only members of etcd_lock_user may take locks
CREATE ROLE etcd_lock_regress_user;
SET ROLE etcd_lock_regress_user;
SELECT sqlstate_of($$SET etcd_lock.prefix = '/other/'$$);
SELECT sqlstate_of($$SELECT etcd_lock('/regress/priv')$$);
SELECT sqlstate_of($$SELECT etcd_try_xact_lock('/regress/priv')$$);
-- PostgreSQL's own error, with a HINT naming the role to grant
SELECT etcd_lock('/regress/priv');
-- (the wording is PostgreSQL's own and differs between versions)
SELECT left(e, 5) AS sqlstate, e LIKE '%"etcd_lock.password_file"%' AS names_it FROM sqlstate_of($$SHOW etcd_lock.password_file$$) e;
-- (the wording is PostgreSQL's own and differs between versions)
SELECT left(e, 5) AS sqlstate, e LIKE '%"etcd_lock.tls_key_file"%' AS names_it FROM sqlstate_of($$SHOW etcd_lock.tls_key_file$$) e;
-- (the wording is PostgreSQL's own and differs between versions)
SELECT left(e, 5) AS sqlstate, e LIKE '%"etcd_lock.username"%' AS names_it FROM sqlstate_of($$SHOW etcd_lock.username$$) e;
SELECT name FROM pg_settings WHERE name LIKE 'etcd_lock.%' ORDER BY 1;
-- looking is allowed
SELECT count(*) >= 0 AS can_read_view FROM etcd_locks;
RESET ROLE;
GRANT etcd_lock_user TO etcd_lock_regress_user;
SET ROLE etcd_lock_regress_user;
SELECT etcd_lock('/regress/priv') > 0 AS member_can_lock;
SELECT etcd_unlock('/regress/priv') AS member_can_unlock;
RESET ROLE;
DROP ROLE etcd_lock_regress_user;
-- a superuser sees every setting
SELECT name, setting FROM pg_settings WHERE name LIKE 'etcd_lock.%' AND name NOT IN ('etcd_lock.endpoints', 'etcd_lock.request_timeout') ORDER BY 1;

-- PREPARE TRANSACTION is refused once etcd locks were taken in it
BEGIN;
SELECT etcd_xact_lock('/regress/prep') > 0 AS locked;
PREPARE TRANSACTION 'etcd_lock_regress';
SELECT etcd_lock_token('/regress/prep') IS NULL AS released_by_failed_prepare;
BEGIN;
SELECT etcd_lock('/regress/prep2') > 0 AS locked;
PREPARE TRANSACTION 'etcd_lock_regress';
SELECT etcd_lock_token('/regress/prep2') IS NULL AS released_by_failed_prepare;
