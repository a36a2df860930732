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
#include "shmem.h"

typedef struct LocalAcq
{
	SubTransactionId subid;		/* InvalidSubTransactionId once committed */
	bool		xact;			/* transaction scope */
} LocalAcq;

/*
 * The states of a local entry, and the only transitions (lt_set_state
 * checks every one against lt_moves):
 *
 *   WAITING    an acquire of its key is in progress; no acquisition yet
 *   HELD       nacq > 0: the key holds; relied on only within the lease
 *              deadline (lt_lease_lost) and while no delete was sent
 *   RELEASING  the last acquisition went: the delete is being sent or
 *              handed to the worker (lt_release_now, _sync, _async)
 *   OWED       no acquisition, its release did not fit the release queue and
 *              was never sent: lt_flush_owed queues it; an acquire of the
 *              name adopts the key (it is still ours)
 *   OWED_SENT  the same, but the delete (or an acquire's put) may have
 *              reached etcd: never adopted, never taken back
 *
 * An entry leaves the table (lt_free_entry) for one of three reasons: its
 * release was confirmed or handed to the worker (LT_GONE_RELEASED, from
 * any state but WAITING), it has no key in etcd (LT_GONE_UNUSED, only
 * from WAITING), or the lease went (LT_GONE_LEASE: etcd removes every key
 * with it). lt_set_state and lt_free_entry say (WARNING, XX000) when a
 * move breaks these rules.
 */
typedef enum LtState
{
	LT_WAITING,
	LT_HELD,
	LT_RELEASING,
	LT_OWED,
	LT_OWED_SENT
} LtState;

#define LT_NSTATES	(LT_OWED_SENT + 1)
#define LT_IS_OWED(e)	((e)->state == LT_OWED || (e)->state == LT_OWED_SENT)

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

typedef enum LtGone
{
	LT_GONE_RELEASED,			/* its release was confirmed or queued */
	LT_GONE_UNUSED,				/* it has no key in etcd to release */
	LT_GONE_LEASE				/* the lease went, and every key with it */
} LtGone;

typedef struct LocalLock
{
	char		pfx[ETCD_MAX_KEY];	/* hash key: prefix + name + "/", then
									 * ".shared" or ".sem" for those kinds */
	EtcdKeyKind kind;
	int			permits;		/* semaphore: N */
	char	   *name;
	char	   *key;
	int			keylen;
	int64		token;
	int64		lease_id;
	int			nacq;
	int			maxacq;
	LocalAcq   *acqs;
	EtcdLockInfo *info;			/* our entry in the etcd_locks view */
	bool		counted;		/* counted in the slot's nheld */
	LtState		state;
} LocalLock;

#define LT_MAX_WAIT_REFS 1024	/* releases a COMMIT waits for, at most */

static HTAB *lt_locks = NULL;
static char lt_pinned_prefix[ETCD_MAX_PREFIX + 1];	/* lt_prefix */
static int64 lt_lease = 0;		/* this backend's lease, 0 if none */
static int	lt_xact_acqs = 0;	/* acquisitions made in the current xact */
static bool lt_exit_registered = false;

static bool lt_loss_reported = false;	/* the loss was told (error/WARNING) */
static bool lt_dead = false;	/* lt_lease counted as lost: for good */
static TimeoutId lt_timeout_id = MAX_TIMEOUTS;	/* the lease-deadline timer */
static bool lt_owed = false;	/* some entry's release could not be queued */

static emit_log_hook_type prev_emit_log_hook = NULL;
static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

static char *lt_database = NULL;
static char *lt_user = NULL;

static void lt_xact_cb(XactEvent event, void *arg);
static void lt_subxact_cb(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg);

/*
 * etcd_locktable_init registers the transaction hooks (at preload).
 */
static void lt_emit_log(ErrorData *edata);
static void lt_flush_owed(void);
static void lt_keep_owed(LocalLock *e, int64 rev);
static void lt_arm_timer(void);
static void lt_check_entry(LocalLock *e, const char *name, EtcdKeyKind kind, int permits);
static LocalLock *lt_enter(const char *pfx, const char *name, const EtcdLockKeys *k, bool xact);
static void lt_hold(LocalLock *e, int64 rev, bool xact);
static bool lt_acquire_many(char **names, EtcdKeyKind *kinds, int n, bool xact,
							bool wait, TimestampTz deadline, bool by_lock_timeout,
							int64 *tokens);
static void lt_ExecutorStart(QueryDesc *queryDesc, int eflags);
static void lt_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
							  bool readOnlyTree, ProcessUtilityContext context,
							  ParamListInfo params, QueryEnvironment *queryEnv,
							  DestReceiver *dest, QueryCompletion *qc);

void
etcd_locktable_init(void)
{
	RegisterXactCallback(lt_xact_cb, NULL);
	RegisterSubXactCallback(lt_subxact_cb, NULL);
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = lt_emit_log;
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = lt_ExecutorStart;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = lt_ProcessUtility;
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
static const char *
lt_prefix(void)
{
	if (lt_locks != NULL && hash_get_num_entries(lt_locks) > 0)
		return lt_pinned_prefix;
	return etcd_lock_prefix ? etcd_lock_prefix : "";
}

/*
 * lt_check_prefix refuses an acquisition (55000) while the session holds
 * keys under a prefix other than the one now set: a new key would be under
 * neither consistently, and the held ones must stay addressable by name.
 */
static void
lt_check_prefix(void)
{
	const char *now = etcd_lock_prefix ? etcd_lock_prefix : "";

	if (lt_locks == NULL || hash_get_num_entries(lt_locks) == 0 ||
		strcmp(now, lt_pinned_prefix) == 0)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("etcd_lock.prefix changed while this session holds etcd locks"),
			 errdetail("This session's locks are under prefix \"%s\"; the setting is now \"%s\".",
					   lt_pinned_prefix, now),
			 errhint("Release this session's etcd locks (etcd_unlock_all(), and resign campaigns) before taking locks under the new prefix.")));
}

/*
 * lt_hash_key is the local table's key for name in a mode: a session holds
 * an exclusive, a shared and a semaphore key of one name independently
 * (a semaphore's N is checked against the entry, not part of the key).
 */
static void
lt_hash_key(char *buf, size_t size, const char *name, EtcdKeyKind kind)
{
	snprintf(buf, size, "%s%s/%s", lt_prefix(), name,
			 kind == ETCD_KEY_SHARED ? ".shared" : kind == ETCD_KEY_SEMAPHORE ? ".sem" :
			 kind == ETCD_KEY_ELECTION ? ".election" : "");
}

static void
lt_create_table(void)
{
	HASHCTL		ctl;

	ctl.keysize = ETCD_MAX_KEY;
	ctl.entrysize = sizeof(LocalLock);
	lt_locks = hash_create("etcd_lock local locks", 16, &ctl,
						   HASH_ELEM | HASH_STRINGS);
}

/*
 * lt_count_held keeps the slot's count of held locks, which tells the worker
 * and the deadline timer whether the owner must be signalled at a loss.
 * Under the lock: a lock won just as the worker marks the lease lost is
 * either counted before the worker looks (it signals) or sees the loss
 * (etcd_acquire checks after counting).
 */
static void
lt_count_held(LocalLock *e, bool held)
{
	EtcdLeaseSlot *slot;

	if (e->counted == held || lt_lease == 0)
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
static void
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
static void
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
	hash_search(lt_locks, e->pfx, HASH_REMOVE, NULL);
}

/*
 * lt_lease_lost says whether this backend's lease can no longer be relied
 * on: etcd said it is gone (the worker marked it LOST), or its local
 * deadline passed, whether or not the worker noticed (src/README.md,
 * condition (a)). Once true it stays true for this lease: a renewal that
 * lands later never revives locks the session was told it lost.
 */
static bool
lt_lease_lost(void)
{
	EtcdLeaseSlot *slot;
	bool		lost;

	if (lt_lease == 0)
		return false;
	if (lt_dead)
		return true;
	slot = etcd_my_slot();
	if (LWLockHeldByMe(etcd_shared->lock))
		return false;			/* an error path inside a critical section */
	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	lost = slot->lease_id != lt_lease || slot->state != LEASE_LIVE ||
		etcd_mono_now() >= slot->deadline;
	LWLockRelease(etcd_shared->lock);
	if (lost)
		lt_dead = true;
	return lost;
}

/*
 * lt_deadline_timeout is the backend's own timer at its lease deadline
 * (a signal handler: no locks, no allocation). If the worker renewed the
 * lease meanwhile, it re-arms at the new deadline; otherwise the lease
 * counts as lost and the owner is signalled as on_lease_loss says, even if
 * the worker is dead, stuck or restarting.
 *
 * Re-arming from inside the handler is safe on 15-18 (timeout.c, the same
 * there): handle_sig_alarm calls a handler with the alarm disabled, after
 * removing its timeout from the active list, and reschedules after every
 * handler; enable_timeout_after inserts the timeout again and sets the
 * timer, as handle_sig_alarm itself does for periodic timeouts. SIGALRM
 * is blocked while its handler runs, so this cannot nest.
 */
static void
lt_deadline_timeout(void)
{
	EtcdLeaseSlot *slot;
	EtcdMono	now,
				deadline;

	if (lt_lease == 0 || etcd_shared == NULL)
		return;
	slot = etcd_my_slot();
	if (slot->lease_id != lt_lease)
		return;
	now = etcd_mono_now();
	deadline = ((volatile EtcdLeaseSlot *) slot)->deadline;
	if (!lt_dead && slot->state == LEASE_LIVE && now < deadline)
	{
		enable_timeout_after(lt_timeout_id, (int) ((deadline - now) / 1000) + 1);
		return;
	}
	etcd_signal_loss(slot);
}

/*
 * lt_rearm_timer arms the deadline timer again if something disarmed it:
 * PostgreSQL's error recovery disables all timeouts, so after any ERROR the
 * timer is gone until the next statement or lock call puts it back.
 */
static void
lt_rearm_timer(void)
{
	if (lt_lease != 0 && !lt_dead && lt_timeout_id != MAX_TIMEOUTS &&
		!get_timeout_active(lt_timeout_id))
		lt_arm_timer();
}

/*
 * lt_arm_timer arms the deadline timer for the current lease.
 */
static void
lt_arm_timer(void)
{
	EtcdMono	left = etcd_my_slot()->deadline - etcd_mono_now();

	if (lt_timeout_id == MAX_TIMEOUTS)
		lt_timeout_id = RegisterTimeout(USER_TIMEOUT, lt_deadline_timeout);
	enable_timeout_after(lt_timeout_id, (int) Max(1, left / 1000 + 1));
}

static bool
lt_lease_ok(void)
{
	return !lt_lease_lost();
}

/*
 * lt_forget_lease drops the lease and every local entry (used when the
 * lease was lost, and at exit). The slot is freed for the next backend,
 * and the lease is handed to the worker for revocation: at exit its locks
 * free at once; once lost (a passed deadline may have left it alive in
 * etcd) its keys no longer block anyone. A revoked lease answers "not
 * found" to a second revoke, so this is safe whatever etcd still has.
 */
static void
lt_forget_lease(StringInfo lost_names)
{
	if (lt_locks)
	{
		HASH_SEQ_STATUS seq;
		LocalLock  *e;

		hash_seq_init(&seq, lt_locks);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			if (lost_names && e->state == LT_HELD)
				appendStringInfo(lost_names, "%s\"%s\"",
								 lost_names->len ? ", " : "", e->name);
			lt_free_entry(e, LT_GONE_LEASE);
		}
	}
	if (lt_timeout_id != MAX_TIMEOUTS)
		disable_timeout(lt_timeout_id, false);
	if (lt_lease != 0)
	{
		EtcdLeaseSlot *slot = etcd_my_slot();

		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		if (slot->lease_id == lt_lease)
		{
			slot->state = LEASE_NONE;
			slot->nheld = 0;
		}
		LWLockRelease(etcd_shared->lock);
		(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, lt_lease, NULL, 0, 0, false, false);
	}
	lt_lease = 0;
	lt_xact_acqs = 0;
}

/*
 * lt_held_names lists the names of the locks this backend holds, quoted.
 */
static char *
lt_held_names(void)
{
	StringInfoData names;
	HASH_SEQ_STATUS seq;
	LocalLock  *e;

	initStringInfo(&names);
	if (lt_locks == NULL)
		return names.data;
	hash_seq_init(&seq, lt_locks);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->state == LT_HELD)
			appendStringInfo(&names, "%s\"%s\"", names.len ? ", " : "", e->name);
	return names.data;
}

/*
 * lt_emit_log rewrites the cancel (or terminate) that the worker sent for
 * on_lease_loss into an error that says why and names the lost locks.
 * Runs in ErrorContext; must not throw.
 */
static void
lt_emit_log(ErrorData *edata)
{
	static bool in_hook = false;

	if (!in_hook && lt_lease != 0 && etcd_shared != NULL &&
		((edata->elevel == ERROR && edata->sqlerrcode == ERRCODE_QUERY_CANCELED) ||
		 (edata->elevel == FATAL && edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)) &&
		lt_lease_lost())
	{
		char	   *names;

		in_hook = true;
		names = lt_held_names();
		edata->message = psprintf("%s: the etcd lease of this session expired; its locks were lost",
								  edata->elevel == FATAL ? "terminating connection" :
								  "canceling statement");
		edata->detail = names[0] ? psprintf("Lost locks: %s.", names) : NULL;
		edata->hint = pstrdup("Another session may hold these locks now. Use fencing tokens to protect work outside the database.");
		edata->sqlerrcode = ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
		lt_loss_reported = true;
		in_hook = false;
	}
	/*
	 * PostgreSQL's own "permission denied for function etcd_lock" says
	 * nothing of how to be allowed (issue 23 item 8): name the role. The
	 * untranslated format identifies the error in every lc_messages; the
	 * function name is in the message verbatim. No catalog access here
	 * (the transaction may be aborting).
	 */
	if (edata->elevel == ERROR && edata->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE &&
		edata->hint == NULL && edata->message_id != NULL && edata->message != NULL &&
		strcmp(edata->message_id, "permission denied for function %s") == 0 &&
		strstr(edata->message, " etcd_") != NULL)
		edata->hint = pstrdup("The etcd_lock functions that take or release locks are granted to the role etcd_lock_user: GRANT etcd_lock_user TO the role that calls them.");
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*
 * lt_surface_loss tells, once per lease, at the start of a statement, a
 * loss the session has not been told of yet: with on_lease_loss = warn as
 * a WARNING; with cancel, when the loss came while the session was idle
 * (there was no statement to cancel), by failing this statement.
 * Transaction control (ROLLBACK, COMMIT) is never failed for it.
 */
static void
lt_surface_loss(bool txn_control)
{
	char	   *names;
	bool		warn;

	if (lt_lease == 0 || lt_loss_reported || !lt_lease_lost())
		return;
	names = lt_held_names();
	if (names[0] == '\0')
		return;
	warn = etcd_lock_on_lease_loss == ON_LOSS_WARN;
	if (txn_control && !warn)
		return;
	lt_loss_reported = true;
	ereport(warn ? WARNING : ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg(warn ? "the etcd lease of this session expired; its locks were lost" :
					"canceling statement: the etcd lease of this session expired; its locks were lost"),
			 errdetail("Lost locks: %s.", names),
			 errhint("Another session may hold these locks now.")));
}

static void
lt_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	lt_surface_loss(false);
	lt_rearm_timer();
	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

static void
lt_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
				  bool readOnlyTree, ProcessUtilityContext context,
				  ParamListInfo params, QueryEnvironment *queryEnv,
				  DestReceiver *dest, QueryCompletion *qc)
{
	bool		discard_all = IsA(pstmt->utilityStmt, DiscardStmt) &&
		((DiscardStmt *) pstmt->utilityStmt)->target == DISCARD_ALL;

	lt_surface_loss(IsA(pstmt->utilityStmt, TransactionStmt));
	lt_rearm_timer();
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	/*
	 * DISCARD ALL (a pooler's reset query) releases session-level locks, as
	 * it does advisory locks: the next client of this connection must not
	 * inherit them. It cannot run inside a transaction block, so no
	 * transaction-level lock is left.
	 */
	if (discard_all)
		etcd_release_all();
}

/*
 * lt_check_lost raises the lease-lost ERROR, once, if the worker found this
 * backend's lease gone. The locks it held are forgotten; the next lock call
 * gets a fresh lease.
 */
static void
lt_check_lost(void)
{
	StringInfoData names;

	if (!lt_lease_lost())
		return;
	initStringInfo(&names);
	lt_forget_lease(&names);
	if (names.len == 0)
		return;					/* nothing was held: just take a new lease */
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("etcd_lock: the etcd lease of this session expired; its locks were lost"),
			 names.len ? errdetail("Lost locks: %s.", names.data) : 0,
			 errhint("Another session may have taken these locks. Use fencing tokens to protect work outside the database.")));
}

/*
 * lt_backend_exit hands the lease to the worker for revocation, so this
 * backend's locks free at once without blocking its exit.
 */
static void
lt_backend_exit(int code, Datum arg)
{
	lt_forget_lease(NULL);
}

/*
 * lt_ensure_lease grants this backend's lease on first use and registers
 * it for the worker's keepalives.
 */
static void
lt_ensure_lease(void)
{
	EtcdLeaseSlot *slot;
	EtcdMono	sent;
	int			ttl = etcd_lock_lease_ttl;
	int64		id;

	if (lt_lease != 0)
		return;

	/*
	 * Register the wait events now (17+), not first inside a COMMIT
	 * callback, where registering could fail.
	 */
	for (int kind = 0; kind < ETCD_NUM_WAIT_KINDS; kind++)
		(void) etcd_wait_event((EtcdWaitKind) kind);

	/* a lease the worker granted ahead: no request on the first lock */
	id = etcd_adopt_pooled_lease(ttl, etcd_lock_on_lease_loss);
	if (id == 0)
	{
		char	   *body;
		int64		want = etcd_new_lease_id(ttl, &body);

		/*
		 * The ID goes into the worker's lease file before the grant is
		 * sent (the worker is woken for it): a crash restart revokes it
		 * even if this backend dies before it knows the grant's outcome.
		 * A grant that failed may still have reached etcd: it is handed
		 * to the worker for revocation, never forgotten.
		 */
		slot = etcd_my_slot();
		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		slot->granting_id = want;
		LWLockRelease(etcd_shared->lock);
		etcd_wake_worker();
		sent = etcd_mono_now();
		PG_TRY();
		{
			id = etcd_lease_grant(want, body);
		}
		PG_CATCH();
		{
			LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
			slot->granting_id = 0;
			LWLockRelease(etcd_shared->lock);
			(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, want, NULL, 0, 0, false, true);
			PG_RE_THROW();
		}
		PG_END_TRY();
		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		slot->granting_id = 0;
		slot->pid = MyProcPid;
		slot->lease_id = id;
		slot->ttl = ttl;
		slot->renewed_at = sent;
		slot->deadline = LEASE_DEADLINE(sent, ttl);
		slot->next_keepalive = sent + MONO_MS(ttl * 1000L / 3);
		slot->on_loss = etcd_lock_on_lease_loss;
		slot->loss_expired = false;
		slot->nheld = 0;
		pg_atomic_write_u32(&slot->loss_signalled, 0);
		slot->state = LEASE_LIVE;
		LWLockRelease(etcd_shared->lock);
	}
	lt_lease = id;
	lt_dead = false;
	lt_loss_reported = false;
	lt_arm_timer();
	if (!lt_exit_registered)
	{
		before_shmem_exit(lt_backend_exit, 0);
		lt_exit_registered = true;
	}
	etcd_wake_worker();
}

/*
 * lt_value builds the JSON value stored in our key: who holds it.
 */
static char *
lt_value(void)
{
	StringInfoData b;
	char		host[256];
	char		sysid[32];

	if (lt_database == NULL)
	{
		char	   *db = get_database_name(MyDatabaseId);
		char	   *user = GetUserNameFromId(GetSessionUserId(), true);

		lt_database = MemoryContextStrdup(TopMemoryContext, db ? db : "");
		lt_user = MemoryContextStrdup(TopMemoryContext, user ? user : "");
	}
	if (gethostname(host, sizeof(host)) != 0)
		host[0] = '\0';
	host[sizeof(host) - 1] = '\0';
	snprintf(sysid, sizeof(sysid), UINT64_FORMAT, GetSystemIdentifier());

	initStringInfo(&b);
	appendStringInfo(&b, "{\"instance\":\"%s\",\"host\":", sysid);
	escape_json(&b, host);
	appendStringInfo(&b, ",\"port\":%d,\"pid\":%d,\"database\":", PostPortNumber, MyProcPid);
	escape_json(&b, lt_database);
	appendStringInfoString(&b, ",\"user\":");
	escape_json(&b, lt_user);
	appendStringInfoString(&b, ",\"application_name\":");
	escape_json(&b, application_name ? application_name : "");
	appendStringInfoString(&b, ",\"acquired_at\":");
	escape_json(&b, timestamptz_to_str(GetCurrentTimestamp()));
	appendStringInfoChar(&b, '}');
	return b.data;
}

static void
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
	lt_xact_acqs++;
}

/*
 * lt_publish shows e's current holds in the etcd_locks view.
 */
static void
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
 * lt_wait_queued makes sure no queued release of our key is outstanding:
 * takes back a pending release of a held key (returns true, *token set) or
 * waits until the worker has sent it (nowait: reports *timed_out at once).
 * Bounded by the caller's deadline and by twice the request timeout (the
 * worker cannot reach etcd).
 */
static bool
lt_wait_queued(const EtcdLockKeys *k, int64 *token, TimestampTz deadline,
			   bool nowait, bool *timed_out)
{
	TimestampTz giveup = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 2 * etcd_lock_request_timeout);
	bool		taken = false;

	*timed_out = false;
	for (;;)
	{
		EtcdReclaim r = etcd_reclaim_release(lt_lease, k->key, k->keylen, k->kind, token);
		TimestampTz now;

		if (r != RECLAIM_WAIT)
		{
			taken = r == RECLAIM_TAKEN;
			break;
		}
		now = GetCurrentTimestamp();
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
 * are held, nothing here throws, and the wait is bounded (40 ms); if etcd is
 * slower, the worker finishes the job after the error returned.
 */
static void
lt_wait_removed(const EtcdLockKeys *k)
{
	TimestampTz giveup = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 40);

	HOLD_INTERRUPTS();
	while (etcd_release_pending(lt_lease, k->key, k->keylen) &&
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
	if (lt_locks == NULL)
		lt_create_table();
	lt_flush_owed();
	lt_check_prefix();
	if (lt_lease != 0)
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
	other = hash_search(lt_locks, pfx, HASH_FIND, NULL);
	if (other && (other->state == LT_HELD || LT_IS_OWED(other)))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("this session %s \"%s\" already",
						kind == ETCD_KEY_EXCLUSIVE ? "campaigns in the etcd election" :
						"holds the etcd lock", name),
				 errhint("A name is a lock (exclusive or shared), a semaphore or an election.")));
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

	lt_hash_key(pfx, sizeof(pfx), name, kind);
	e = hash_search(lt_locks, pfx, HASH_FIND, NULL);
	lt_check_entry(e, name, kind, permits);
	if (e && e->state == LT_HELD && kind == ETCD_KEY_ELECTION)
	{
		/* campaigning again as the leader: proclaim (as Go's Campaign) */
		etcd_lock_keys(&k, lt_prefix(), name, lt_lease, kind, 0);
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
	etcd_lock_keys(&k, lt_prefix(), name, lt_lease, kind, permits);

	e = lt_enter(pfx, name, &k, xact);

	PG_TRY();
	{
		int64		reclaimed = 0;
		bool		timed_out;

		/* a try waits for an earlier release of its own, too */
		if (lt_wait_queued(&k, &reclaimed, deadline, false, &timed_out))
		{
			/* taken back: rely on it only within the lease deadline */
			if (lt_lease_lost())
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("etcd_lock: the etcd lease of this session expired; its locks were lost")));
			held = true;
			rev = reclaimed;
		}
		else if (timed_out)
			lt_raise_timeout(name, kind, by_lock_timeout);
		else
		{
			int64		r;

			key_sent = true;
			held = etcd_lock_acquire(&k, lt_lease, value ? value : lt_value(), !wait, &r);
			rev = r;
			if (!held && wait)
			{
				held = etcd_lock_wait(&k, rev, deadline, lt_lease_ok);
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
				if (!etcd_queue_release(REL_DELETE, k.kind, lt_lease, k.key, k.keylen,
										rev, false, true))
					lt_keep_owed(e, rev);
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
		 * key again before that release is done. Not when etcd refused the
		 * request (permission denied): nothing was written then.
		 */
		if (key_sent && geterrcode() == ERRCODE_INSUFFICIENT_PRIVILEGE && rev == 0)
			key_sent = false;
		if (key_sent)
		{
			if (etcd_queue_release(REL_DELETE, k.kind, lt_lease, k.key, k.keylen, rev, false, true))
				lt_wait_removed(&k);
			else
				lt_keep_owed(e, rev);	/* the queue is full: never forget it */
		}
		if (e->state == LT_WAITING)
			lt_free_entry(e, LT_GONE_UNUSED);
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (!held)
	{
		lt_free_entry(e, e->state == LT_WAITING ? LT_GONE_UNUSED : LT_GONE_RELEASED);
		return false;
	}
	lt_hold(e, rev, xact);

	/*
	 * Won just as the lease ran out? Counted first, then checked, so either
	 * the worker saw the count and signals, or we see the loss here.
	 */
	if (lt_lease_lost())
		lt_check_lost();
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

	if (hash_get_num_entries(lt_locks) == 0)
		strlcpy(lt_pinned_prefix, etcd_lock_prefix ? etcd_lock_prefix : "",
				sizeof(lt_pinned_prefix));
	e = hash_search(lt_locks, pfx, HASH_ENTER, &found);

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
		e->lease_id = lt_lease;
		e->nacq = 0;
		e->maxacq = 0;
		e->acqs = NULL;
		e->counted = false;
		e->state = LT_WAITING;
		e->info = etcd_lockinfo_add(lt_prefix(), name, k->kind, k->permits, lt_lease);
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
		PG_RE_THROW();
	}
	PG_END_TRY();
	etcd_gateway_call_deadline(0);
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
 * lt_give_up removes the keys of a multi-lock that failed or timed out:
 * each key that may exist (keysent: put by the txn, or taken back from a
 * queued release) is released by the worker (by its revision, or read
 * first if that is unknown), and the entries are forgotten. Nothing stays
 * held or queued. Entries held before the call (es[i] NULL) are untouched.
 */
static void
lt_give_up(LocalLock **es, EtcdLockKeys *ks, int n, const bool *keysent,
		   const int64 *revs)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		LocalLock  *e = es[i];

		if (e == NULL || e->state == LT_HELD)
			continue;
		if (keysent[i] &&
			!etcd_queue_release(REL_DELETE, ks[i].kind, lt_lease, ks[i].key, ks[i].keylen,
								revs[i], false, true))
			lt_keep_owed(e, revs[i]);
		if (e->state == LT_WAITING)
			lt_free_entry(e, LT_GONE_UNUSED);
	}
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
		LocalLock  *e;

		lt_hash_key(pfx, sizeof(pfx), names[i], kinds[i]);
		e = hash_search(lt_locks, pfx, HASH_FIND, NULL);
		lt_check_entry(e, names[i], kinds[i], 0);
		lt_check_key_free(names[i], kinds[i]);
		already[i] = e != NULL && e->state == LT_HELD;
	}
	lt_ensure_lease();
	for (i = 0; i < n; i++)
	{
		if (already[i])
			continue;
		etcd_lock_keys(&ks[i], lt_prefix(), names[i], lt_lease, kinds[i], 0);
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
			if (lt_wait_queued(&ks[i], &reclaimed, deadline, false, &timed_out))
			{
				keysent[i] = true;	/* it exists: given up on failure */
				revs[i] = reclaimed;
				held[i] = true;
				if (lt_lease_lost())
					ereport(ERROR,
							(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
							 errmsg("etcd_lock: the etcd lease of this session expired; its locks were lost")));
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

			for (j = 0; j < nsend; j++)
				keysent[send_idx[j]] = true;
			etcd_lock_acquire_many(send, nsend, lt_lease, lt_value(), &rev, h);
			for (j = 0; j < nsend; j++)
			{
				revs[send_idx[j]] = rev;
				held[send_idx[j]] = h[j];
			}
		}
		for (j = 0; j < nsend && all; j++)
		{
			i = send_idx[j];
			if (held[i])
				continue;
			if (!wait)
				held[i] = etcd_lock_first(&ks[i], revs[i]);
			else if (!(held[i] = etcd_lock_wait(&ks[i], revs[i], deadline, lt_lease_ok)))
				lt_raise_timeout(names[i], kinds[i], by_lock_timeout);
			all = held[i];
		}
	}
	PG_CATCH();
	{
		lt_give_up(es, ks, n, keysent, revs);
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (!all)
	{
		/* try: one does not hold at once; none is kept */
		lt_give_up(es, ks, n, keysent, revs);
		return false;
	}
	for (i = 0; i < n; i++)
	{
		if (already[i])
		{
			lt_hash_key(pfx, sizeof(pfx), names[i], kinds[i]);
			es[i] = hash_search(lt_locks, pfx, HASH_FIND, NULL);
			lt_push_acq(es[i], xact);
			lt_publish(es[i]);
		}
		else
			lt_hold(es[i], revs[i], xact);
		tokens[i] = es[i]->token;
	}
	if (lt_lease_lost())
		lt_check_lost();
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

/*
 * lt_keep_owed keeps e, which has no acquisition, as the owed release of a
 * key that may exist in etcd (token rev, or 0 if unknown) and whose delete
 * may have been sent: it is never adopted or taken back, and lt_flush_owed
 * queues it when the queue has room. For when the queue is full.
 */
static void
lt_keep_owed(LocalLock *e, int64 rev)
{
	e->token = rev;
	lt_set_state(e, LT_OWED_SENT);
	lt_owed = true;
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
	/* a release that may have been sent stays so: never taken back */
	attempted = attempted || e->state == LT_OWED_SENT;
	if (e->lease_id == lt_lease && !lt_lease_lost() &&
		!etcd_queue_release(REL_DELETE, e->kind, e->lease_id, e->key, e->keylen, e->token,
							true, attempted))
	{
		lt_set_state(e, attempted ? LT_OWED_SENT : LT_OWED);
		lt_owed = true;
		return false;
	}
	lt_free_entry(e, e->lease_id == lt_lease && !lt_lease_lost() ?
				  LT_GONE_RELEASED : LT_GONE_LEASE);
	return true;
}

/*
 * lt_flush_owed queues the releases that did not fit in the queue before.
 */
static void
lt_flush_owed(void)
{
	HASH_SEQ_STATUS seq;
	LocalLock  *e;
	bool		still = false;

	if (!lt_owed || lt_locks == NULL)
		return;
	hash_seq_init(&seq, lt_locks);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (!LT_IS_OWED(e))
			continue;
		if (!lt_release_async(e, e->state == LT_OWED_SENT))
			still = true;
	}
	lt_owed = still;
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
	if (lt_locks)
		e = hash_search(lt_locks, pfx, HASH_FIND, NULL);
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
	if (e->acqs[i].subid != InvalidSubTransactionId && lt_xact_acqs > 0)
		lt_xact_acqs--;
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
		else if (a.subid != InvalidSubTransactionId && lt_xact_acqs > 0)
			lt_xact_acqs--;
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
	if (ok)
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
	if (lt_locks == NULL)
		return;
	lt_flush_owed();
	hash_seq_init(&seq, lt_locks);
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

	if (lt_locks == NULL || lt_lease_lost())
		return false;
	lt_hash_key(pfx, sizeof(pfx), name, kind);
	e = hash_search(lt_locks, pfx, HASH_FIND, NULL);
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
	if (lt_locks)
		e = hash_search(lt_locks, pfx, HASH_FIND, NULL);
	if (e == NULL || e->state != LT_HELD)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this session is not the leader of etcd election \"%s\"", name),
				 errhint("Call etcd_campaign() first.")));
	etcd_lock_keys(&k, lt_prefix(), name, lt_lease, ETCD_KEY_ELECTION, 0);
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

	return out->exists && lt_lease != 0 && out->lease_id == lt_lease &&
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

	etcd_lock_keys(&k, lt_prefix(), name, lt_lease, ETCD_KEY_ELECTION, 0);
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

	etcd_lock_keys(&k, lt_prefix(), name, lt_lease, ETCD_KEY_ELECTION, 0);
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

	hash_seq_init(&seq, lt_locks);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (lt_filter(e, commit ? keep_at_commit : keep_at_abort, NULL) == 0)
		{
			etcd_last_queued.idx = -1;
			if (lt_release_async(e, false) && etcd_last_queued.idx >= 0 &&
				nrefs < LT_MAX_WAIT_REFS)
				refs[nrefs++] = etcd_last_queued;
		}
	lt_xact_acqs = 0;
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
				max = hash_get_num_entries(lt_locks);
	char	  **keys = palloc(sizeof(char *) * max);
	int		   *lens = palloc(sizeof(int) * max);
	int64	   *tokens = palloc(sizeof(int64) * max);
	bool		expired;

	lt_check_lost();
	hash_seq_init(&seq, lt_locks);
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
		lt_locks != NULL && lt_lease != 0 && hash_get_num_entries(lt_locks) > 0)
		lt_verify();
	if (lt_owed && (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT))
		lt_flush_owed();
	if (lt_locks == NULL || lt_xact_acqs == 0)
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

	if (lt_locks == NULL || lt_xact_acqs == 0)
		return;
	if (event != SUBXACT_EVENT_COMMIT_SUB && event != SUBXACT_EVENT_ABORT_SUB)
		return;
	hash_seq_init(&seq, lt_locks);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (lt_filter(e, event == SUBXACT_EVENT_COMMIT_SUB ? keep_at_subcommit :
					  keep_at_subabort, ids) == 0)
			(void) lt_release_async(e, false);
}
