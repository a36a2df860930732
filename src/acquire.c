/*
 * acquire.c
 *		The acquire drivers: etcd_acquire (one name: lock, try, shared,
 *		semaphore, election) and etcd_acquire_many (several names, all or
 *		none), under the call's deadline (timeout, lock_timeout).
 *
 * Each takes back or waits for a queued release of its own key first,
 * sends the acquire txn, waits, and on failure gives up every key it may
 * have put (handed to the worker, never forgotten). Owns no state: the
 * entries are the table's (locktable_int.h), the lease session.c's, the
 * requests lockops'.
 */
#include "postgres.h"

#include <unistd.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "executor/executor.h"
#include "tcop/utility.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "gateway.h"
#include "guc.h"
#include "lockops.h"
#include "locktable.h"
#include "locktable_int.h"
#include "shmem.h"

static void lt_check_entry(LocalLock *e, const char *name, EtcdKeyKind kind, int permits);
static LocalLock * lt_enter(const char *pfx, const char *name, const EtcdLockKeys *k, bool xact);
static void lt_hold(LocalLock *e, int64 rev, bool xact);
static bool lt_acquire_many(char **names, EtcdKeyKind *kinds, int n, bool xact, bool wait, TimestampTz deadline, bool by_lock_timeout, int64 *tokens);

/*
 * lt_wait_queued makes sure no queued release of our key is outstanding:
 * takes back a pending release of a held key (returns true, *token set) or
 * waits until the worker has sent it (nowait: reports *timed_out at once).
 * Bounded by the caller's deadline and by twice the request timeout (the
 * worker cannot reach etcd), counted from when a read for a late attempt
 * of the key is due if there is one (etcd_reclaim_release). *late_until:
 * how long an acquire attempt of the key may still land, handed on from a
 * queue entry dropped or taken back.
 */
static bool
lt_wait_queued(const EtcdLockKeys *k, int64 *token, EtcdMono *late_until,
			   TimestampTz deadline, bool nowait, bool *timed_out)
{
	TimestampTz giveup = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 2 * etcd_lock_request_timeout);
	bool		taken = false;

	*timed_out = false;
	for (;;)
	{
		EtcdMono	due = 0;
		EtcdReclaim r = etcd_reclaim_release(lt.lease, k->key, k->keylen, k->kind,
											 token, late_until, &due);
		TimestampTz now;

		if (r != RECLAIM_WAIT)
		{
			taken = r == RECLAIM_TAKEN;
			break;
		}
		now = GetCurrentTimestamp();
		/* a read for a late attempt is due only at its time: wait for it too */
		if (due > etcd_mono_now())
			giveup = Max(giveup, TimestampTzPlusMilliseconds(now, (due - etcd_mono_now()) / 1000 +
															 2 * etcd_lock_request_timeout));
		if (nowait || (deadline != 0 && now >= deadline))
		{
			*timed_out = true;
			break;
		}
		if (now >= giveup)
		{
			ConditionVariableCancelSleep();
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("etcd_lock: could not acquire a lock: an earlier release of it has not reached etcd"),
					 errhint("Check that etcd is reachable from this server.")));
		}
		ConditionVariableTimedSleep(&etcd_shared->release_cv, 10,
									etcd_wait_event(ETCD_WAIT_OWN_RELEASE));
	}
	ConditionVariableCancelSleep();
	return taken;
}

/*
 * lt_wait_removed waits briefly for the worker to delete the queue key of a
 * wait that is being abandoned (cancel, timeout, error), so nobody queues
 * behind a ghost once the ERROR returns. Runs in an error path: interrupts
 * are held, nothing here throws, and the wait is bounded (giveup: 40 ms
 * after the error, for all the keys of the call); if etcd is slower, the
 * worker finishes the job after the error returned.
 */
static void
lt_wait_removed(const EtcdLockKeys *k, TimestampTz giveup)
{
	HOLD_INTERRUPTS();
	while (etcd_release_pending(lt.lease, k->key, k->keylen) &&
		   GetCurrentTimestamp() < giveup)
		ConditionVariableTimedSleep(&etcd_shared->release_cv, 5,
									etcd_wait_event(ETCD_WAIT_OWN_RELEASE));
	ConditionVariableCancelSleep();
	RESUME_INTERRUPTS();
}

static void
lt_raise_timeout(const char *name, EtcdKeyKind kind, bool by_lock_timeout)
{
	const char *what = kind == ETCD_KEY_SEMAPHORE ? "a permit of etcd semaphore" :
		kind == ETCD_KEY_ELECTION ? "leadership of etcd election" : "etcd lock";

	if (by_lock_timeout)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("canceling wait for %s \"%s\" due to lock_timeout", what, name)));
	ereport(ERROR,
			(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
			 errmsg("could not obtain %s \"%s\" within the timeout", what, name)));
}

/*
 * lt_begin_acquire: before any acquisition, report a lost lease, make sure
 * the table exists, queue releases still owed, and take the current
 * etcd_lock.on_lease_loss for this backend's lease.
 */
static void
lt_begin_acquire(void)
{
	lt_check_lost();
	if (lt.locks == NULL)
		lt_create_table();
	lt_flush_owed();
	lt_check_prefix();
	if (lt.lease != 0)
		etcd_my_slot()->on_loss = etcd_lock_on_lease_loss;
}

/*
 * lt_check_key_free is the one rule of which of this session's own entries
 * share a key in etcd: an exclusive lock and a campaign of one name are
 * both "<prefix><name>/<lease hex>" (the Go client's keys), so while one is
 * held, or its release owed, the other is refused before anything is sent
 * (42809) — for single and multi-lock calls alike. Otherwise a give-up of
 * the one would delete the other's key, or an acquire would adopt it.
 */
static void
lt_check_key_free(const char *name, EtcdKeyKind kind)
{
	char		pfx[ETCD_MAX_KEY];
	LocalLock  *other;

	if (kind != ETCD_KEY_EXCLUSIVE && kind != ETCD_KEY_ELECTION)
		return;
	lt_hash_key(pfx, sizeof(pfx), name,
				kind == ETCD_KEY_EXCLUSIVE ? ETCD_KEY_ELECTION : ETCD_KEY_EXCLUSIVE);
	other = hash_search(lt.locks, pfx, HASH_FIND, NULL);
	if (other && (other->state == LT_HELD || LT_IS_OWED(other)))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("this session %s \"%s\" already",
						kind == ETCD_KEY_EXCLUSIVE ? "campaigns in the etcd election" :
						"holds the etcd lock", name),
				 errhint("A name is a lock (exclusive or shared), a semaphore or an election.")));
}

/*
 * The steps both acquire drivers take, in this order:
 *   lt_find       the entry of a name, refused while its release may have
 *                 reached etcd (lt_check_entry)
 *   lt_enter      the entry to acquire into (shown as waiting)
 *   lt_reclaim    a queued release of our own key: taken back (the key
 *                 holds, within the lease deadline) or waited for
 *   lt_give_up    on failure: every key that may exist is handed to the
 *                 worker (or kept owed if the queue is full), never
 *                 forgotten; entries with no key left are forgotten
 *   lt_hold, lt_won  on success: counted, then the lease checked again
 */
static LocalLock *
lt_find(const char *name, EtcdKeyKind kind, int permits)
{
	char		pfx[ETCD_MAX_KEY];
	LocalLock  *e;

	lt_hash_key(pfx, sizeof(pfx), name, kind);
	e = hash_search(lt.locks, pfx, HASH_FIND, NULL);
	lt_check_entry(e, name, kind, permits);
	return e;
}

/*
 * lt_reclaim takes back (true, *rev its revision) or waits for a queued
 * release of k, for entry e; *timed_out if the deadline passed first. A key
 * taken back is relied on only within the lease deadline. An entry taken
 * back that watched for a late acquire attempt hands that watch to e.
 */
static bool
lt_reclaim(LocalLock *e, const EtcdLockKeys *k, TimestampTz deadline, int64 *rev,
		   bool *timed_out)
{
	int64		reclaimed = 0;
	EtcdMono	late = 0;
	bool		taken = lt_wait_queued(k, &reclaimed, &late, deadline, false, timed_out);

	e->late_until = Max(e->late_until, late);
	if (!taken)
		return false;
	*rev = reclaimed;
	if (lt_lease_lost())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etcd_lock: the etcd lease of this session expired; its locks were lost")));
	return true;
}

/*
 * lt_give_up removes the keys of an acquire that failed, timed out or (a
 * try) did not hold: each key that may exist (keysent: put by the txn, or
 * taken back from a queued release) is released by the worker (by its
 * revision, or read first if that is unknown), and the entries are
 * forgotten. Nothing stays held or queued. Entries held before the call
 * (es[i] NULL, or held) are untouched. denied: etcd refused the request
 * (permission denied), so a key of unknown revision was never written.
 * wait: an error path; wait briefly for the worker's deletes
 * (lt_wait_removed) so nobody queues behind them once the ERROR returns.
 */
static void
lt_give_up(LocalLock **es, EtcdLockKeys *ks, int n, const bool *keysent,
		   const int64 *revs, bool denied, bool wait)
{
	TimestampTz giveup = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 40);
	int			i;

	for (i = 0; i < n; i++)
	{
		LocalLock  *e = es[i];

		if (e == NULL || e->state == LT_HELD)
			continue;
		if (keysent[i] && !(denied && revs[i] == 0))
		{
			if (etcd_queue_release(REL_DELETE, ks[i].kind, lt.lease, ks[i].key, ks[i].keylen,
								   revs[i], false, true, e->late_until))
			{
				if (wait)
					lt_wait_removed(&ks[i], giveup);
			}
			else
				lt_keep_owed(e, revs[i]);	/* the queue is full: never forget it */
		}
		else if (e->state == LT_WAITING && !lt_settle_late(e, etcd_mono_now()))
			continue;			/* kept owed: a late attempt may still land */
		if (e->state == LT_WAITING)
			lt_free_entry(e, LT_GONE_UNUSED);
	}
}

/*
 * lt_note_late: the acquire txn of e (sent since the gateway's count was
 * resends0) was resent after an attempt that may have reached etcd; that
 * attempt may still be applied and put e's key after it was released or
 * given up: lt_settle_late watches for it until RESOLVE_SETTLE_MS from now.
 * (An acquire txn that failed altogether leaves a key of unknown revision
 * to the worker, which watches for a late attempt anyway.)
 */
static void
lt_note_late(LocalLock *e, uint64 resends0)
{
	if (e != NULL && etcd_gateway_late_resends() != resends0)
		e->late_until = Max(e->late_until, etcd_mono_now() + MONO_MS(RESOLVE_SETTLE_MS));
}

/*
 * lt_won: after the keys of a call were counted as held, a loss that the
 * worker saw meanwhile is told now (counted first, then checked, so either
 * the worker saw the count and signals, or we see the loss here).
 */
static void
lt_won(void)
{
	if (lt_lease_lost())
		lt_check_lost();
}

/*
 * lt_acquire does the work of etcd_acquire within deadline (0: none).
 */
static bool
lt_acquire(const char *name, EtcdKeyKind kind, int permits, const char *value,
		   bool xact, bool wait, TimestampTz deadline, bool by_lock_timeout,
		   int64 *token)
{
	char		pfx[ETCD_MAX_KEY];
	LocalLock  *e;
	EtcdLockKeys k;
	volatile int64 rev = 0;
	volatile bool key_sent = false;
	bool		held = false;

	lt_begin_acquire();

	e = lt_find(name, kind, permits);
	if (e && e->state == LT_HELD && kind == ETCD_KEY_ELECTION)
	{
		/* campaigning again as the leader: proclaim (as Go's Campaign) */
		etcd_lock_keys(&k, lt_prefix(), name, lt.lease, kind, 0);
		(void) etcd_election_proclaim(&k, e->token, value);
		*token = e->token;
		return true;
	}
	if (e && e->state == LT_HELD)
	{
		lt_push_acq(e, xact);
		lt_publish(e);
		*token = e->token;
		return true;
	}
	lt_check_key_free(name, kind);

	lt_ensure_lease();
	etcd_lock_keys(&k, lt_prefix(), name, lt.lease, kind, permits);

	lt_hash_key(pfx, sizeof(pfx), name, kind);
	e = lt_enter(pfx, name, &k, xact);

	PG_TRY();
	{
		int64		reclaimed = 0;
		bool		timed_out;

		/* a try waits for an earlier release of its own, too */
		if (lt_reclaim(e, &k, deadline, &reclaimed, &timed_out))
		{
			held = true;
			rev = reclaimed;
		}
		else if (timed_out)
			lt_raise_timeout(name, kind, by_lock_timeout);
		else
		{
			int64		r;
			uint64		resends0 = etcd_gateway_late_resends();

			key_sent = true;
			held = etcd_lock_acquire(&k, lt.lease, value ? value : lt_value(), !wait, &r);
			rev = r;
			lt_note_late(e, resends0);
			if (!held && wait)
			{
				etcd_count_call(ETCD_CALL_WAIT);
				held = etcd_lock_wait(&k, rev, deadline, lt_lease_ok);
				if (held)
					etcd_count_call(ETCD_CALL_HANDOFF);
				if (!held)
				{
					EtcdStatus	st;

					/*
					 * Give up our place before the error returns, with a
					 * request bound of its own (the caller's deadline has
					 * passed); if etcd does not confirm, the worker does it.
					 */
					etcd_gateway_call_deadline(0);
					if (etcd_lock_release(k.key, k.keylen, rev, &st))
						key_sent = false;
					lt_raise_timeout(name, kind, by_lock_timeout);
				}
			}
			if (!held && !wait && rev > 0)
			{
				/*
				 * A try found our own key but not as the holder (a leftover
				 * of an earlier outcome): give it up, never leave it. If the
				 * queue is full the entry stays, owed, and never adoptable.
				 */
				if (!etcd_queue_release(REL_DELETE, k.kind, lt.lease, k.key, k.keylen,
										rev, false, true, e->late_until))
					lt_keep_owed(e, rev);
				else
					e->late_until = 0;	/* the worker watches for it */
			}
			if (!held)
				key_sent = false;	/* no key of ours is left behind */
		}
	}
	PG_CATCH();
	{
		/*
		 * Interrupted, timed out or failed: our key may exist in etcd (as a
		 * place in the queue). The worker deletes it (by its revision; if
		 * that is unknown it reads it first); this backend does not use the
		 * key again before that release is done.
		 */
		bool		sent = key_sent;
		int64		r = rev;

		lt_give_up(&e, &k, 1, &sent, &r,
				   geterrcode() == ERRCODE_INSUFFICIENT_PRIVILEGE, true);
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (!held)
	{
		/*
		 * A try's own leftover key whose release did not fit the queue is
		 * kept owed (OWED_SENT) until lt_flush_owed queues it: never
		 * forgotten. Otherwise nothing of ours is left: forget the entry.
		 */
		if (e->state != LT_OWED_SENT && lt_settle_late(e, etcd_mono_now()))
			lt_free_entry(e, e->state == LT_WAITING ? LT_GONE_UNUSED : LT_GONE_RELEASED);
		return false;
	}
	lt_hold(e, rev, xact);
	lt_won();
	*token = rev;
	return true;
}

/*
 * lt_check_entry refuses to acquire e's name again while e is a release
 * that may have reached etcd and could not even be queued (condition (c)),
 * or a semaphore held with another N.
 */
static void
lt_check_entry(LocalLock *e, const char *name, EtcdKeyKind kind, int permits)
{
	if (e && e->state == LT_HELD && kind == ETCD_KEY_SEMAPHORE && e->permits != permits)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("this session holds etcd semaphore \"%s\" with %d permits; this call asks for %d",
						name, e->permits, permits)));
	if (e && e->state == LT_OWED_SENT)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("etcd_lock: could not acquire a lock: an earlier release of it has not reached etcd"),
				 errhint("Check that etcd is reachable from this server.")));
}

/*
 * lt_enter finds or creates the entry (hash key pfx) for acquiring key k
 * of name, shown as waiting in etcd_locks.
 */
static LocalLock *
lt_enter(const char *pfx, const char *name, const EtcdLockKeys *k, bool xact)
{
	bool		found;
	LocalLock  *e;

	if (hash_get_num_entries(lt.locks) == 0)
		strlcpy(lt.pinned_prefix, etcd_lock_prefix ? etcd_lock_prefix : "",
				sizeof(lt.pinned_prefix));
	e = hash_search(lt.locks, pfx, HASH_ENTER, &found);

	if (found && LT_IS_OWED(e) && strcmp(e->key, k->key) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etcd_lock: could not acquire a semaphore: an earlier release of it has not reached etcd"),
				 errhint("Check that etcd is reachable from this server.")));
	if (!found)
	{
		e->kind = k->kind;
		e->permits = k->permits;
		e->name = MemoryContextStrdup(TopMemoryContext, name);
		e->key = MemoryContextStrdup(TopMemoryContext, k->key);
		e->keylen = k->keylen;
		e->token = 0;
		e->lease_id = lt.lease;
		e->nacq = 0;
		e->maxacq = 0;
		e->acqs = NULL;
		e->counted = false;
		e->state = LT_WAITING;
		e->late_until = 0;
		e->info = etcd_lockinfo_add(lt_prefix(), name, k->kind, k->permits, lt.lease);
		etcd_lockinfo_set(e->info, LOCKINFO_WAITING, xact ? 0 : 1, xact ? 1 : 0, 0);
	}
	return e;
}

/*
 * lt_hold records that e's key holds (token rev): one more acquisition.
 */
static void
lt_hold(LocalLock *e, int64 rev, bool xact)
{
	e->token = rev;
	lt_set_state(e, LT_HELD);
	lt_push_acq(e, xact);
	lt_publish(e);
	lt_count_held(e, true);
}

/*
 * lt_deadline is the end of a wait of timeout_ms (< 0: none) or
 * lock_timeout, whichever comes first (0: none).
 */
static TimestampTz
lt_deadline(bool wait, int64 timeout_ms, bool *by_lock_timeout)
{
	TimestampTz deadline = 0;
	TimestampTz now = GetCurrentTimestamp();

	*by_lock_timeout = false;
	if (!wait)
		return 0;
	if (timeout_ms >= 0)
		deadline = TimestampTzPlusMilliseconds(now, Min(timeout_ms, INT_MAX));
	if (LockTimeout > 0 &&
		(deadline == 0 || TimestampTzPlusMilliseconds(now, LockTimeout) < deadline))
	{
		deadline = TimestampTzPlusMilliseconds(now, LockTimeout);
		*by_lock_timeout = true;
	}
	return deadline;
}

/*
 * lt_timeout_instead turns an etcd request cut short by the caller's
 * deadline (an etcd error once the deadline passed) into the timeout's
 * error (55P03); other errors go on. In a PG_CATCH.
 */
static void
lt_timeout_instead(MemoryContext oldcxt, TimestampTz deadline,
				   const char *name, EtcdKeyKind kind, bool by_lock_timeout)
{
	etcd_gateway_call_deadline(0);
	if (deadline != 0 && GetCurrentTimestamp() >= deadline)
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_SYSTEM_ERROR)
		{
			FlushErrorState();
			etcd_count_call(ETCD_CALL_TIMED_OUT);
			lt_raise_timeout(name, kind, by_lock_timeout);
		}
		FreeErrorData(edata);
	}
}

/*
 * lt_bounded runs an acquisition (lt_acquire, or lt_acquire_many if many)
 * under its deadline: the timeout and lock_timeout bound the whole call,
 * etcd requests included (each gets the smaller of request_timeout and
 * what is left), and a request cut short by them ends the call with their
 * error (55P03), not etcd's.
 */
typedef struct LtCall
{
	bool		many;
	char	  **names;
	EtcdKeyKind *kinds;
	int			n;
	int			permits;
	const char *value;
	bool		xact;
	bool		wait;
	int64	   *tokens;
} LtCall;

static bool
lt_bounded(const LtCall *c, int64 timeout_ms)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	bool		by_lock_timeout;
	volatile TimestampTz deadline = lt_deadline(c->wait, timeout_ms, &by_lock_timeout);
	bool		result;

	etcd_gateway_wait_kind(ETCD_WAIT_REQUEST);
	etcd_gateway_call_deadline(deadline);
	PG_TRY();
	{
		if (c->many)
			result = lt_acquire_many(c->names, c->kinds, c->n, c->xact, c->wait,
									 deadline, by_lock_timeout, c->tokens);
		else
			result = lt_acquire(c->names[0], c->kinds[0], c->permits, c->value,
								c->xact, c->wait, deadline, by_lock_timeout, c->tokens);
	}
	PG_CATCH();
	{
		lt_timeout_instead(oldcxt, deadline, c->names[0], c->kinds[0], by_lock_timeout);
		etcd_count_call(geterrcode() == ERRCODE_LOCK_NOT_AVAILABLE ?
						ETCD_CALL_TIMED_OUT : ETCD_CALL_FAILED);
		PG_RE_THROW();
	}
	PG_END_TRY();
	etcd_gateway_call_deadline(0);
	etcd_count_call(result ? ETCD_CALL_ACQUIRED : ETCD_CALL_BUSY);
	return result;
}

/*
 * etcd_acquire takes the lock name for this session (xact: until the end of
 * the transaction). wait=false never waits for another holder. timeout_ms <
 * 0 waits without limit (lock_timeout still applies). The timeout and
 * lock_timeout bound the whole call, etcd requests included: each request
 * gets the smaller of request_timeout and what is left, and a request cut
 * short by them ends the call with their error (55P03), not etcd's.
 * Returns true and the fencing token if the lock is held; false only when
 * wait=false and it is taken by another.
 */
bool
etcd_acquire(const char *name, EtcdKeyKind kind, int permits, const char *value,
			 bool xact, bool wait, int64 timeout_ms, int64 *token)
{
	LtCall		c = {false, (char **) &name, &kind, 1, permits, value, xact, wait, token};

	return lt_bounded(&c, timeout_ms);
}

/*
 * lt_acquire_many takes names[0..n-1] (modes kinds[]) all or none, within
 * deadline: the keys not yet held go to etcd in one txn (one create
 * revision for all, so two multi-locks over overlapping names never
 * deadlock: the older is ahead on every name they share), then the call
 * waits until each holds. On timeout or error every key it put is removed
 * (handed to the worker); try (wait false): if any does not hold at once,
 * none is kept.
 */
static bool
lt_acquire_many(char **names, EtcdKeyKind *kinds, int n, bool xact, bool wait,
				TimestampTz deadline, bool by_lock_timeout, int64 *tokens)
{
	char		pfx[ETCD_MAX_KEY];
	LocalLock **es = palloc0(sizeof(LocalLock *) * n);
	EtcdLockKeys *ks = palloc0(sizeof(EtcdLockKeys) * n);
	EtcdLockKeys *send = palloc0(sizeof(EtcdLockKeys) * n);
	int		   *send_idx = palloc(sizeof(int) * n);
	bool	   *held = palloc0(sizeof(bool) * n);
	bool	   *already = palloc0(sizeof(bool) * n);
	bool	   *keysent = palloc0(sizeof(bool) * n);
	int64	   *revs = palloc0(sizeof(int64) * n);
	int			nsend = 0;
	bool		all = true;
	int			i,
				j;

	lt_begin_acquire();

	for (i = 0; i < n; i++)
	{
		LocalLock  *e = lt_find(names[i], kinds[i], 0);

		lt_check_key_free(names[i], kinds[i]);
		already[i] = e != NULL && e->state == LT_HELD;
	}
	lt_ensure_lease();
	for (i = 0; i < n; i++)
	{
		if (already[i])
			continue;
		etcd_lock_keys(&ks[i], lt_prefix(), names[i], lt.lease, kinds[i], 0);
		lt_hash_key(pfx, sizeof(pfx), names[i], kinds[i]);
		es[i] = lt_enter(pfx, names[i], &ks[i], xact);
	}

	PG_TRY();
	{
		/* a pending release of one of our keys: taken back, or waited for */
		for (i = 0; i < n; i++)
		{
			int64		reclaimed = 0;
			bool		timed_out;

			if (already[i])
				continue;
			if (lt_reclaim(es[i], &ks[i], deadline, &reclaimed, &timed_out))
			{
				keysent[i] = true;	/* it exists: given up on failure */
				revs[i] = reclaimed;
				held[i] = true;
				continue;
			}
			if (timed_out)
				lt_raise_timeout(names[i], kinds[i], by_lock_timeout);
			send[nsend] = ks[i];
			send_idx[nsend++] = i;
		}
		if (nsend > 0)
		{
			bool	   *h = palloc0(sizeof(bool) * nsend);
			int64		rev;
			uint64		resends0 = etcd_gateway_late_resends();

			for (j = 0; j < nsend; j++)
				keysent[send_idx[j]] = true;
			etcd_lock_acquire_many(send, nsend, lt.lease, lt_value(), &rev, h);
			for (j = 0; j < nsend; j++)
			{
				revs[send_idx[j]] = rev;
				held[send_idx[j]] = h[j];
				lt_note_late(es[send_idx[j]], resends0);
			}
		}
		for (j = 0; j < nsend && all; j++)
		{
			i = send_idx[j];
			if (held[i])
				continue;
			if (!wait)
				held[i] = etcd_lock_first(&ks[i], revs[i]);
			else
			{
				etcd_count_call(ETCD_CALL_WAIT);
				if (!(held[i] = etcd_lock_wait(&ks[i], revs[i], deadline, lt_lease_ok)))
					lt_raise_timeout(names[i], kinds[i], by_lock_timeout);
				etcd_count_call(ETCD_CALL_HANDOFF);
			}
			all = held[i];
		}
	}
	PG_CATCH();
	{
		lt_give_up(es, ks, n, keysent, revs,
				   geterrcode() == ERRCODE_INSUFFICIENT_PRIVILEGE, true);
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (!all)
	{
		/* try: one does not hold at once; none is kept */
		lt_give_up(es, ks, n, keysent, revs, false, false);
		return false;
	}
	for (i = 0; i < n; i++)
	{
		if (already[i])
		{
			lt_hash_key(pfx, sizeof(pfx), names[i], kinds[i]);
			es[i] = hash_search(lt.locks, pfx, HASH_FIND, NULL);
			lt_push_acq(es[i], xact);
			lt_publish(es[i]);
		}
		else
			lt_hold(es[i], revs[i], xact);
		tokens[i] = es[i]->token;
	}
	lt_won();
	return true;
}

/*
 * etcd_acquire_many: etcd_acquire for several names at once, all or none
 * (lt_acquire_many), with one timeout for the whole call.
 */
bool
etcd_acquire_many(char **names, EtcdKeyKind *kinds, int n, bool xact, bool wait,
				  int64 timeout_ms, int64 *tokens)
{
	LtCall		c = {true, names, kinds, n, 0, NULL, xact, wait, tokens};

	return lt_bounded(&c, timeout_ms);
}
