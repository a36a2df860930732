/*
 * locktable.c
 *		The backend's local lock table and its transaction hooks.
 *
 * One entry per lock name this backend holds. Every acquisition is recorded
 * with the subtransaction that made it and its scope (session or xact), so:
 *	- a second acquisition of a held name costs no etcd request;
 *	- xact acquisitions end at the end of their transaction;
 *	- any acquisition made in a (sub)transaction that aborts is undone;
 *	- the etcd key is released when the last acquisition is gone.
 * Session and xact holds of one name share one etcd key.
 *
 * Releases at transaction end never touch the network: they are queued in
 * shared memory for the background worker. Before this backend acquires a
 * name again it takes such a queued release back (it still holds the key)
 * or waits until the worker has sent it, so a late release can never
 * remove a newer acquisition of the same key.
 *
 * Owns LtSession (lt) and the entries' states (LtState, lt_set_state: the
 * one place an entry changes state). The acquire drivers are acquire.c's,
 * the lease session.c's.
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

#define LT_MAX_WAIT_REFS 1024	/* releases a COMMIT waits for, at most */

LtSession	lt = {.timeout_id = MAX_TIMEOUTS};

static const char *const lt_state_names[LT_NSTATES] = {
	"waiting", "held", "releasing", "owed", "owed (sent)"
};

/* lt_moves[from][to]: the transitions allowed (a state to itself: always) */
static const bool lt_moves[LT_NSTATES][LT_NSTATES] = {
	/* to:           WAITING HELD   RELEASING OWED   OWED_SENT */
	[LT_WAITING] = {true, true, false, false, true},
	[LT_HELD] = {false, true, true, false, false},
	[LT_RELEASING] = {false, false, true, true, true},
	[LT_OWED] = {false, true, false, true, true},
	[LT_OWED_SENT] = {false, false, false, false, true},
};


static void lt_xact_cb(XactEvent event, void *arg);
static void lt_subxact_cb(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg);

static void lt_verify(void);

void
etcd_locktable_init(void)
{
	RegisterXactCallback(lt_xact_cb, NULL);
	RegisterSubXactCallback(lt_subxact_cb, NULL);
	lt_session_init();
}

/*
 * lt_prefix is the etcd_lock.prefix this session's keys use. While the table
 * has an entry (a lock held or waited for, a campaign, a release owed) it is
 * the value in force when the first of them was entered: a SET or a reload
 * that changes the prefix then must not turn held keys into someone else's
 * (issue 23 item 6: the token read NULL, the unlock warned, a try-lock took
 * a second key). The new value applies once the session holds nothing;
 * until then lt_check_prefix refuses acquisitions.
 */
const char *
lt_prefix(void)
{
	if (lt.locks != NULL && hash_get_num_entries(lt.locks) > 0)
		return lt.pinned_prefix;
	return etcd_lock_prefix ? etcd_lock_prefix : "";
}

/*
 * lt_check_prefix refuses an acquisition (55000) while the session holds
 * keys under a prefix other than the one now set: a new key would be under
 * neither consistently, and the held ones must stay addressable by name.
 */
void
lt_check_prefix(void)
{
	const char *now = etcd_lock_prefix ? etcd_lock_prefix : "";

	if (lt.locks == NULL || hash_get_num_entries(lt.locks) == 0 ||
		strcmp(now, lt.pinned_prefix) == 0)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("etcd_lock.prefix changed while this session holds etcd locks"),
			 errdetail("This session's locks are under prefix \"%s\"; the setting is now \"%s\".",
					   lt.pinned_prefix, now),
			 errhint("Release this session's etcd locks (etcd_unlock_all(), and resign campaigns) before taking locks under the new prefix.")));
}

/*
 * lt_hash_key is the local table's key for name in a mode: a session holds
 * an exclusive, a shared and a semaphore key of one name independently
 * (a semaphore's N is checked against the entry, not part of the key).
 */
void
lt_hash_key(char *buf, size_t size, const char *name, EtcdKeyKind kind)
{
	snprintf(buf, size, "%s%s/%s", lt_prefix(), name,
			 kind == ETCD_KEY_SHARED ? ".shared" : kind == ETCD_KEY_SEMAPHORE ? ".sem" :
			 kind == ETCD_KEY_ELECTION ? ".election" : "");
}

void
lt_create_table(void)
{
	HASHCTL		ctl;

	ctl.keysize = ETCD_MAX_KEY;
	ctl.entrysize = sizeof(LocalLock);
	lt.locks = hash_create("etcd_lock local locks", 16, &ctl,
						   HASH_ELEM | HASH_STRINGS);
}

/*
 * lt_count_held keeps the slot's count of held locks, which tells the worker
 * and the deadline timer whether the owner must be signalled at a loss.
 * Under the lock: a lock won just as the worker marks the lease lost is
 * either counted before the worker looks (it signals) or sees the loss
 * (etcd_acquire checks after counting).
 */
void
lt_count_held(LocalLock *e, bool held)
{
	EtcdLeaseSlot *slot;

	if (e->counted == held || lt.lease == 0)
		return;
	e->counted = held;
	slot = etcd_my_slot();
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	slot->nheld += held ? 1 : -1;
	LWLockRelease(etcd_shared->lock);
}

/*
 * lt_bad_move reports a transition the state table does not allow: a bug
 * in this file. It is said (WARNING, XX000) rather than thrown: it can
 * happen in transaction callbacks, where an ERROR would be worse.
 */
static void
lt_bad_move(LocalLock *e, const char *to)
{
	Assert(false);
	ereport(WARNING,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("etcd_lock: internal error: the local entry of \"%s\" went from %s to %s",
					e->name ? e->name : "?", lt_state_names[e->state], to)));
}

/*
 * lt_set_state moves e to state to, if lt_moves allows it, keeping the
 * instance's count of owed releases for etcd_lock_status.
 */
void
lt_set_state(LocalLock *e, LtState to)
{
	bool		was_owed = LT_IS_OWED(e);

	if (!lt_moves[e->state][to])
		lt_bad_move(e, lt_state_names[to]);
	e->state = to;
	if (LT_IS_OWED(e) != was_owed)
	{
		if (was_owed)
			pg_atomic_fetch_sub_u32(&etcd_shared->counters.owed, 1);
		else
			pg_atomic_fetch_add_u32(&etcd_shared->counters.owed, 1);
	}
}

/*
 * lt_free_entry forgets e (why: LtGone). A release still owed is never
 * forgotten but by its being queued (or by the lease going).
 */
void
lt_free_entry(LocalLock *e, LtGone why)
{
	if ((why == LT_GONE_UNUSED && e->state != LT_WAITING) ||
		(why == LT_GONE_RELEASED && e->state == LT_WAITING))
		lt_bad_move(e, why == LT_GONE_UNUSED ? "gone (unused)" : "gone (released)");
	if (LT_IS_OWED(e))
		pg_atomic_fetch_sub_u32(&etcd_shared->counters.owed, 1);
	lt_count_held(e, false);
	if (e->info == NULL)
		pg_atomic_fetch_sub_u32(&etcd_shared->counters.unshown, 1);
	etcd_lockinfo_remove(e->info);
	e->info = NULL;
	if (e->name)
		pfree(e->name);
	if (e->key)
		pfree(e->key);
	if (e->acqs)
		pfree(e->acqs);
	hash_search(lt.locks, e->pfx, HASH_REMOVE, NULL);
}

void
lt_push_acq(LocalLock *e, bool xact)
{
	if (e->nacq >= e->maxacq)
	{
		int			n = e->maxacq ? e->maxacq * 2 : 4;

		if (e->acqs)
			e->acqs = repalloc(e->acqs, n * sizeof(LocalAcq));
		else
			e->acqs = MemoryContextAlloc(TopMemoryContext, n * sizeof(LocalAcq));
		e->maxacq = n;
	}
	e->acqs[e->nacq].subid = GetCurrentSubTransactionId();
	e->acqs[e->nacq].xact = xact;
	e->nacq++;
	lt.xact_acqs++;
}

/*
 * lt_publish shows e's current holds in the etcd_locks view.
 */
void
lt_publish(LocalLock *e)
{
	int			i,
				nxact = 0;

	if (e->info == NULL || e->nacq == 0)
		return;
	for (i = 0; i < e->nacq; i++)
		if (e->acqs[i].xact)
			nxact++;
	etcd_lockinfo_set(e->info, LOCKINFO_HELD, e->nacq - nxact, nxact, e->token);
}

/*
 * lt_keep_owed keeps e, which has no acquisition, as the owed release of a
 * key that may exist in etcd (token rev, or 0 if unknown) and whose delete
 * may have been sent: it is never adopted or taken back, and lt_flush_owed
 * queues it when the queue has room. For when the queue is full.
 */
void
lt_keep_owed(LocalLock *e, int64 rev)
{
	e->token = rev;
	lt_set_state(e, LT_OWED_SENT);
	lt.owed = true;
}

/*
 * lt_settle_late: e's key is gone as far as etcd answered (its delete, first
 * sent at since, was confirmed; or it was never put: since is now), but an
 * attempt of its acquire may still be applied until e->late_until and put
 * the key again under our lease, held by nobody. The worker reads the key
 * at that time (at once if it has passed) and deletes what it finds
 * (etcd_queue_settle). If the queue is full, e stays owed (OWED_SENT,
 * token 0: read, then deleted) for lt_flush_owed, never adopted. Returns
 * whether e may be forgotten.
 */
bool
lt_settle_late(LocalLock *e, EtcdMono since)
{
	if (e->late_until == 0 || since >= e->late_until ||
		e->lease_id != lt.lease || lt_lease_lost())
		return true;			/* nothing can land, or not under a live lease */
	if (etcd_queue_settle(e->kind, e->lease_id, e->key, e->keylen, e->late_until))
		return true;
	lt_keep_owed(e, 0);
	return false;
}

/*
 * lt_release_async hands the release of e's key to the worker and forgets
 * e. attempted: the release may already have reached etcd, so it must never
 * be taken back. Never throws, never blocks: used from transaction
 * callbacks. If the queue is full, e stays (owed, with no acquisitions) and
 * lt_flush_owed queues it at the next chance; acquiring the name again
 * meanwhile simply adopts the key, which is still ours. Returns whether e
 * was released (and forgotten).
 */
static bool
lt_release_async(LocalLock *e, bool attempted)
{
	EtcdMono	late;

	/* a release that may have been sent stays so: never taken back */
	attempted = attempted || e->state == LT_OWED_SENT;
	/* past late_until, only a delete sent before may have missed a late put */
	late = attempted || etcd_mono_now() < e->late_until ? e->late_until : 0;
	if (e->lease_id == lt.lease && !lt_lease_lost() &&
		!etcd_queue_release(REL_DELETE, e->kind, e->lease_id, e->key, e->keylen, e->token,
							true, attempted, late))
	{
		lt_set_state(e, attempted ? LT_OWED_SENT : LT_OWED);
		lt.owed = true;
		return false;
	}
	lt_free_entry(e, e->lease_id == lt.lease && !lt_lease_lost() ?
				  LT_GONE_RELEASED : LT_GONE_LEASE);
	return true;
}

/*
 * lt_flush_owed queues the releases that did not fit in the queue before.
 */
void
lt_flush_owed(void)
{
	HASH_SEQ_STATUS seq;
	LocalLock  *e;
	bool		still = false;

	if (!lt.owed || lt.locks == NULL)
		return;
	hash_seq_init(&seq, lt.locks);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (!LT_IS_OWED(e))
			continue;
		if (!lt_release_async(e, e->state == LT_OWED_SENT))
			still = true;
	}
	lt.owed = still;
	if (still)
		ereport(LOG,
				(errmsg("etcd_lock: the release queue is full; some releases of backend %d are delayed",
						MyProcPid)));
}

/*
 * lt_release_now deletes the key of e, which has no acquisition left, and
 * forgets e. From the moment the delete is sent the key is never relied on
 * again (condition (c)): if etcd does not confirm it (unreachable, error
 * answer, cancel, statement_timeout), e is forgotten all the same and the
 * delete handed to the worker as attempted, which repeats it until etcd
 * confirms (a compare-and-delete on the token is safe to repeat). The
 * caller gets an ERROR saying the release is not yet confirmed.
 */
static void
lt_release_now(LocalLock *e, const char *name)
{
	EtcdStatus	st;
	bool		ok;
	EtcdMono	sent = etcd_mono_now();

	PG_TRY();
	{
		ok = etcd_lock_release(e->key, e->keylen, e->token, &st);
	}
	PG_CATCH();
	{
		(void) lt_release_async(e, true);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (ok)
	{
		if (lt_settle_late(e, sent))
			lt_free_entry(e, LT_GONE_RELEASED);
		return;
	}
	(void) lt_release_async(e, true);
	etcd_report_status(&st, psprintf("confirm the release of etcd lock \"%s\" (this session no longer holds it; the worker retries the release)",
									 name));
}

/*
 * etcd_release undoes one session acquisition of name (etcd_unlock). When
 * the last one goes, the key is deleted synchronously: once this returns
 * true, another session can take the lock. Returns false with a WARNING if
 * this session holds no session-level lock of that name.
 */
bool
etcd_release(const char *name, EtcdKeyKind kind)
{
	char		pfx[ETCD_MAX_KEY];
	LocalLock  *e = NULL;
	int			i;

	lt_check_lost();
	lt_hash_key(pfx, sizeof(pfx), name, kind);
	if (lt.locks)
		e = hash_search(lt.locks, pfx, HASH_FIND, NULL);
	for (i = e ? e->nacq - 1 : -1; i >= 0; i--)
		if (!e->acqs[i].xact)
			break;
	if (i < 0)
	{
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("you don't own %s named \"%s\"",
						kind == ETCD_KEY_SHARED ? "a shared etcd lock" :
						kind == ETCD_KEY_SEMAPHORE ? "an etcd semaphore permit" :
						kind == ETCD_KEY_ELECTION ? "a campaign in the etcd election" : "an etcd lock",
						name)));
		return false;
	}
	if (e->acqs[i].subid != InvalidSubTransactionId && lt.xact_acqs > 0)
		lt.xact_acqs--;
	memmove(&e->acqs[i], &e->acqs[i + 1], (e->nacq - i - 1) * sizeof(LocalAcq));
	e->nacq--;
	if (e->nacq > 0)
	{
		lt_publish(e);
		return true;
	}
	lt_set_state(e, LT_RELEASING);
	lt_release_now(e, name);
	return true;
}

/*
 * lt_filter keeps the acquisitions of e for which keep() says so (keep may
 * also rewrite one, e.g. move it to the parent subtransaction), counts the
 * dropped ones made in this transaction, and shows the result in
 * etcd_locks. Returns how many acquisitions are left; the caller releases
 * the key when none are.
 */
static int
lt_filter(LocalLock *e, bool (*keep) (LocalAcq *a, void *arg), void *arg)
{
	int			i,
				j = 0;

	for (i = 0; i < e->nacq; i++)
	{
		LocalAcq	a = e->acqs[i];

		if (keep(&a, arg))
			e->acqs[j++] = a;
		else if (a.subid != InvalidSubTransactionId && lt.xact_acqs > 0)
			lt.xact_acqs--;
	}
	e->nacq = j;
	if (j == 0 && e->state == LT_HELD)
		lt_set_state(e, LT_RELEASING);
	lt_publish(e);
	return j;
}

/* etcd_unlock_all: only transaction-level holds stay */
static bool
keep_xact_holds(LocalAcq *a, void *arg)
{
	return a->xact;
}

/* top commit: earlier holds stay; session holds made in it become permanent */
static bool
keep_at_commit(LocalAcq *a, void *arg)
{
	if (a->subid == InvalidSubTransactionId)
		return true;
	if (a->xact)
		return false;
	a->subid = InvalidSubTransactionId;
	return true;
}

/* top abort: whatever the transaction acquired goes */
static bool
keep_at_abort(LocalAcq *a, void *arg)
{
	return a->subid == InvalidSubTransactionId;
}

/* subcommit: holds of the subtransaction move to its parent (ids[1]) */
static bool
keep_at_subcommit(LocalAcq *a, void *arg)
{
	SubTransactionId *ids = arg;

	if (a->subid == ids[0])
		a->subid = ids[1];
	return true;
}

/* subabort: holds made in the subtransaction (ids[0]) go */
static bool
keep_at_subabort(LocalAcq *a, void *arg)
{
	return a->subid != ((SubTransactionId *) arg)[0];
}

/*
 * lt_release_sync deletes e's key now and forgets e; false if etcd could
 * not be reached (e is kept). If the call is interrupted (cancel, timeout),
 * the release may or may not have reached etcd: it is handed to the worker
 * as attempted before the error goes on, so no key is ever stranded.
 */
static bool
lt_release_sync(LocalLock *e, HASH_SEQ_STATUS *seq)
{
	EtcdStatus	st;
	bool		ok;
	EtcdMono	sent = etcd_mono_now();

	PG_TRY();
	{
		ok = etcd_lock_release(e->key, e->keylen, e->token, &st);
	}
	PG_CATCH();
	{
		hash_seq_term(seq);
		(void) lt_release_async(e, true);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (ok && lt_settle_late(e, sent))
		lt_free_entry(e, LT_GONE_RELEASED);
	return ok;
}

/*
 * etcd_release_all drops every session-level acquisition. Keys no longer
 * held are deleted synchronously; if etcd cannot be reached, the rest are
 * handed to the worker (WARNING) so this never waits beyond one request
 * timeout.
 */
void
etcd_release_all(void)
{
	HASH_SEQ_STATUS seq;
	LocalLock  *e;
	bool		etcd_down = false;
	int			queued = 0;

	if (lt_lease_lost())
	{
		StringInfoData names;

		/* cleanup code calls this: clear the lost locks, do not fail */
		initStringInfo(&names);
		lt_forget_lease(&names);
		if (names.len > 0)
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("etcd_lock: the etcd lease of this session expired; its locks were lost"),
					 errdetail("Lost locks: %s.", names.data)));
		return;
	}
	if (lt.locks == NULL)
		return;
	lt_flush_owed();
	hash_seq_init(&seq, lt.locks);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (lt_filter(e, keep_xact_holds, NULL) > 0)
			continue;
		if (e->token == 0)
		{
			/*
			 * An owed queue place whose revision is unknown (its acquire
			 * was cut short while the queue was full): only the worker
			 * removes it, reading it first and deleting it by revision. A
			 * plain delete from here, applied late, could remove a newer
			 * key of the same name.
			 */
			(void) lt_release_async(e, true);	/* stays owed if full */
			continue;
		}
		if (!etcd_down)
		{
			if (lt_release_sync(e, &seq))
				continue;
			etcd_down = true;
		}
		queued++;
		(void) lt_release_async(e, true);
	}
	if (queued > 0)
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("etcd_lock: could not reach etcd; %d lock release(s) will be retried in the background", queued)));
}

/*
 * etcd_token returns the fencing token of a lock this session holds.
 */
bool
etcd_token(const char *name, EtcdKeyKind kind, int64 *token)
{
	char		pfx[ETCD_MAX_KEY];
	LocalLock  *e;

	if (lt.locks == NULL || lt_lease_lost())
		return false;
	lt_hash_key(pfx, sizeof(pfx), name, kind);
	e = hash_search(lt.locks, pfx, HASH_FIND, NULL);
	if (e == NULL || e->state != LT_HELD)
		return false;
	*token = e->token;
	return true;
}

/*
 * etcd_proclaim: the leader of election name announces value (the key
 * keeps its create revision, the token); returns the new mod_revision.
 * Not the leader: 55000.
 */
int64
etcd_proclaim(const char *name, const char *value)
{
	char		pfx[ETCD_MAX_KEY];
	LocalLock  *e = NULL;
	EtcdLockKeys k;

	lt_check_lost();
	lt_hash_key(pfx, sizeof(pfx), name, ETCD_KEY_ELECTION);
	if (lt.locks)
		e = hash_search(lt.locks, pfx, HASH_FIND, NULL);
	if (e == NULL || e->state != LT_HELD)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this session is not the leader of etcd election \"%s\"", name),
				 errhint("Call etcd_campaign() first.")));
	etcd_lock_keys(&k, lt_prefix(), name, lt.lease, ETCD_KEY_ELECTION, 0);
	return etcd_election_proclaim(&k, e->token, value);
}

/*
 * lt_leads says whether the leader read (out) is this session: its key,
 * held by this session with that token (etcd_token checks the lease's
 * deadline).
 */
static bool
lt_leads(const char *name, const EtcdLeader *out)
{
	int64		t;

	return out->exists && lt.lease != 0 && out->lease_id == lt.lease &&
		etcd_token(name, ETCD_KEY_ELECTION, &t) && t == out->token;
}

/*
 * etcd_leader_of reads the leader of election name; *mine says whether it
 * is this session's key (held, within the lease deadline).
 */
void
etcd_leader_of(const char *name, EtcdLeader *out, bool *mine)
{
	EtcdLockKeys k;

	etcd_lock_keys(&k, lt_prefix(), name, lt.lease, ETCD_KEY_ELECTION, 0);
	etcd_election_leader(&k, out);
	*mine = lt_leads(name, out);
}

/*
 * etcd_observe_leader waits (see etcd_election_observe) until the leader of
 * election name or its value differs from last_revision, or timeout_ms
 * passes (< 0: no limit); *mine as in etcd_leader_of.
 */
void
etcd_observe_leader(const char *name, int64 last_revision, int64 timeout_ms,
					EtcdLeader *out, bool *mine)
{
	EtcdLockKeys k;
	TimestampTz deadline = timeout_ms >= 0 ?
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Min(timeout_ms, INT_MAX)) : 0;

	etcd_lock_keys(&k, lt_prefix(), name, lt.lease, ETCD_KEY_ELECTION, 0);
	etcd_gateway_wait_kind(ETCD_WAIT_PREDECESSOR);
	(void) etcd_election_observe(&k, last_revision, deadline, out);
	etcd_gateway_wait_kind(ETCD_WAIT_REQUEST);
	*mine = lt_leads(name, out);
}

/*
 * lt_wait_settled waits, at most etcd_lock.release_wait, until the worker's
 * first attempt at each of the releases in refs has finished, so the locks
 * a COMMIT or ROLLBACK ends are free for everyone when it returns, as with
 * advisory locks. It runs in the commit/abort callback: interrupts are held
 * (it cannot be cancelled), it never raises an error, and once the bound
 * passes the transaction ends all the same (a WARNING) while the worker
 * carries on.
 */
static void
lt_wait_settled(EtcdReleaseRef *refs, int n)
{
	TimestampTz giveup;
	int			i = 0;

	if (n == 0 || etcd_lock_release_wait <= 0)
		return;
	giveup = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), etcd_lock_release_wait);
	for (;;)
	{
		long		left;

		while (i < n && etcd_release_settled(&refs[i]))
			i++;
		if (i == n)
			break;
		left = (long) ((giveup - GetCurrentTimestamp()) / 1000);
		if (left <= 0)
		{
			ereport(WARNING,
					(errmsg("etcd_lock: the release of %d lock(s) ended by this transaction is not confirmed after %d ms; the worker goes on sending it",
							n - i, etcd_lock_release_wait),
					 errhint("Another session may not get these locks until etcd answers.")));
			break;
		}
		ConditionVariableTimedSleep(&etcd_shared->release_cv, Min(left, 100),
									etcd_wait_event(ETCD_WAIT_OWN_RELEASE));
	}
	ConditionVariableCancelSleep();
}

/*
 * lt_end_xact applies the end of the top transaction: commit keeps session
 * acquisitions (now permanent) and drops xact ones; abort drops everything
 * acquired in it. Keys left with no acquisition are released via the
 * worker.
 */
static void
lt_end_xact(bool commit)
{
	HASH_SEQ_STATUS seq;
	LocalLock  *e;
	EtcdReleaseRef refs[LT_MAX_WAIT_REFS];
	int			nrefs = 0;

	hash_seq_init(&seq, lt.locks);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (lt_filter(e, commit ? keep_at_commit : keep_at_abort, NULL) == 0)
		{
			etcd_last_queued.idx = -1;
			if (lt_release_async(e, false) && etcd_last_queued.idx >= 0 &&
				nrefs < LT_MAX_WAIT_REFS)
				refs[nrefs++] = etcd_last_queued;
		}
	lt.xact_acqs = 0;
	lt_wait_settled(refs, nrefs);
}

/*
 * lt_verify (etcd_lock.verify_on_commit) fails the COMMIT unless every lock
 * this session holds is still held: the lease is not lost, its local
 * deadline has not passed, and etcd still has each key with our revision
 * (one linearizable read per 128 locks).
 */
static void
lt_verify(void)
{
	HASH_SEQ_STATUS seq;
	LocalLock  *e;
	int			n = 0,
				max = hash_get_num_entries(lt.locks);
	char	  **keys = palloc(sizeof(char *) * max);
	int		   *lens = palloc(sizeof(int) * max);
	int64	   *tokens = palloc(sizeof(int64) * max);
	bool		expired;

	lt_check_lost();
	hash_seq_init(&seq, lt.locks);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->state != LT_HELD)
			continue;
		keys[n] = e->key;
		lens[n] = e->keylen;
		tokens[n] = e->token;
		n++;
	}
	if (n == 0)
		return;
	expired = lt_lease_lost();
	if (expired || !etcd_locks_still_held(keys, lens, tokens, n))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etcd_lock: cannot commit: %s",
						expired ? "the etcd lease of this session was not renewed in time; its locks may be lost" :
						"an etcd lock of this session was lost"),
				 errdetail("Locks held: %s.", lt_held_names()),
				 errhint("The transaction was rolled back because etcd_lock.verify_on_commit is on.")));
}

static void
lt_xact_cb(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_PRE_COMMIT && etcd_lock_verify_on_commit &&
		lt.locks != NULL && lt.lease != 0 && hash_get_num_entries(lt.locks) > 0)
		lt_verify();
	if (lt.owed && (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT))
		lt_flush_owed();
	if (lt.locks == NULL || lt.xact_acqs == 0)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot PREPARE a transaction that has acquired etcd locks"),
					 errdetail("A prepared transaction has no session to release them.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			lt_end_xact(true);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			lt_end_xact(false);
			break;
		default:
			break;
	}
}

static void
lt_subxact_cb(SubXactEvent event, SubTransactionId mySubid,
			  SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS seq;
	LocalLock  *e;
	SubTransactionId ids[2] = {mySubid, parentSubid};

	if (lt.locks == NULL || lt.xact_acqs == 0)
		return;
	if (event != SUBXACT_EVENT_COMMIT_SUB && event != SUBXACT_EVENT_ABORT_SUB)
		return;
	hash_seq_init(&seq, lt.locks);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (lt_filter(e, event == SUBXACT_EVENT_COMMIT_SUB ? keep_at_subcommit :
					  keep_at_subabort, ids) == 0)
			(void) lt_release_async(e, false);
}
