-- Transaction and subtransaction scope.

-- xact locks end at COMMIT
BEGIN;
SELECT etcd_xact_lock('/rx/commit') > 0 AS locked;
SELECT etcd_lock_token('/rx/commit') IS NOT NULL AS held_in_xact;
COMMIT;
SELECT etcd_lock_token('/rx/commit') IS NULL AS released_at_commit;

-- ... and at ROLLBACK
BEGIN;
SELECT etcd_try_xact_lock('/rx/abort') AS locked;
ROLLBACK;
SELECT etcd_lock_token('/rx/abort') IS NULL AS released_at_rollback;

-- a session lock taken in a transaction that rolls back is released
BEGIN;
SELECT etcd_lock('/rx/session-abort') > 0 AS locked;
ROLLBACK;
SELECT etcd_lock_token('/rx/session-abort') IS NULL AS released_by_rollback;

-- a statement that fails after taking a lock releases it
SELECT etcd_lock('/rx/failing') > 0, 1/0;
SELECT etcd_lock_token('/rx/failing') IS NULL AS released_by_failed_statement;

-- a committed session lock survives its transaction
BEGIN;
SELECT etcd_lock('/rx/session-commit') > 0 AS locked;
COMMIT;
SELECT etcd_lock_token('/rx/session-commit') IS NOT NULL AS kept_after_commit;
-- ... and a later rollback does not release it
BEGIN;
SELECT etcd_lock('/rx/session-commit') > 0 AS reentrant;
ROLLBACK;
SELECT etcd_lock_token('/rx/session-commit') IS NOT NULL AS still_held;
SELECT etcd_unlock('/rx/session-commit') AS unlocked;
SELECT etcd_lock_token('/rx/session-commit') IS NULL AS count_was_one;

-- savepoints: rolled back to, the acquisition inside is undone
BEGIN;
SAVEPOINT a;
SELECT etcd_lock('/rx/sp') > 0 AS locked;
ROLLBACK TO a;
SELECT etcd_lock_token('/rx/sp') IS NULL AS released_by_rollback_to;
SAVEPOINT b;
SELECT etcd_xact_lock('/rx/sp2') > 0 AS locked;
RELEASE b;
SELECT etcd_lock_token('/rx/sp2') IS NOT NULL AS kept_by_release;
COMMIT;
SELECT etcd_lock_token('/rx/sp2') IS NULL AS xact_lock_gone_at_commit;

-- an exception block is a subtransaction too
DO $$
BEGIN
	BEGIN
		PERFORM etcd_lock('/rx/exc');
		RAISE EXCEPTION 'boom';
	EXCEPTION WHEN others THEN
		NULL;
	END;
	IF etcd_lock_token('/rx/exc') IS NOT NULL THEN
		RAISE EXCEPTION 'lock survived the failed block';
	END IF;
END $$;

-- session and xact holds of one name share one key (one token)
BEGIN;
SELECT etcd_lock('/rx/mix') = etcd_xact_lock('/rx/mix') AS same_token;
-- etcd_unlock releases session holds only, as pg_advisory_unlock does
SELECT etcd_unlock('/rx/mix') AS unlocked_session_hold;
SELECT etcd_unlock('/rx/mix') AS cannot_unlock_xact_hold;
SELECT etcd_lock_token('/rx/mix') IS NOT NULL AS xact_hold_remains;
COMMIT;
SELECT etcd_lock_token('/rx/mix') IS NULL AS gone_after_commit;

-- a procedure that commits inside ends its xact locks at each COMMIT
CREATE PROCEDURE rx_proc(INOUT before_commit boolean, INOUT after_commit boolean)
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM etcd_xact_lock('/rx/proc');
	before_commit := etcd_lock_token('/rx/proc') IS NOT NULL;
	COMMIT;
	after_commit := etcd_lock_token('/rx/proc') IS NULL;
END $$;
CALL rx_proc(NULL, NULL);

-- lock, roll back, lock again on one name: the new hold is real
SELECT etcd_lock('/rx/again') AS t1 \gset
SELECT etcd_unlock('/rx/again');
BEGIN;
SELECT etcd_lock('/rx/again') > :t1 AS newer_token;
ROLLBACK;
SELECT etcd_lock('/rx/again') > 0 AS relocked;
SELECT etcd_unlock('/rx/again');
