/*
 * session.c
 *		The session's lease and how its loss is told: the lease grant
 *		(lt_ensure_lease), the deadline check every reliance goes through
 *		(lt_lease_lost, condition (a) of src/README.md), the timer that
 *		fires at the deadline, and the hooks that surface a loss at the next
 *		statement, in messages and at exit.
 *
 * Owns the lease fields of LtSession and the executor / utility / log
 * hooks. May call the lock algorithm (lockops, for the grant), the worker's
 * shared memory (shmem) and the table (locktable_int.h, to forget it when
 * the lease goes).
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

static emit_log_hook_type prev_emit_log_hook = NULL;
static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

static void lt_emit_log(ErrorData *edata);
static void lt_ExecutorStart(QueryDesc *queryDesc, int eflags);
static void lt_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
							  bool readOnlyTree, ProcessUtilityContext context,
							  ParamListInfo params, QueryEnvironment *queryEnv,
							  DestReceiver *dest, QueryCompletion *qc);

static void lt_arm_timer(void);

/*
 * lt_session_init installs the hooks that tell a session of its lost lease
 * (at preload).
 */
void
lt_session_init(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = lt_emit_log;
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = lt_ExecutorStart;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = lt_ProcessUtility;
}

/*
 * lt_lease_lost says whether this backend's lease can no longer be relied
 * on: etcd said it is gone (the worker marked it LOST), or its local
 * deadline passed, whether or not the worker noticed (src/README.md,
 * condition (a)). Once true it stays true for this lease: a renewal that
 * lands later never revives locks the session was told it lost.
 */
bool
lt_lease_lost(void)
{
	EtcdLeaseSlot *slot;
	bool		lost;

	if (lt.lease == 0)
		return false;
	if (lt.dead)
		return true;
	slot = etcd_my_slot();
	if (LWLockHeldByMe(etcd_shared->lock))
		return false;			/* an error path inside a critical section */
	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	lost = slot->lease_id != lt.lease || slot->state != LEASE_LIVE ||
		etcd_mono_now() >= slot->deadline;
	LWLockRelease(etcd_shared->lock);
	if (lost)
		lt.dead = true;
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

	if (lt.lease == 0 || etcd_shared == NULL)
		return;
	slot = etcd_my_slot();
	if (slot->lease_id != lt.lease)
		return;
	now = etcd_mono_now();
	deadline = ((volatile EtcdLeaseSlot *) slot)->deadline;
	if (!lt.dead && slot->state == LEASE_LIVE && now < deadline)
	{
		enable_timeout_after(lt.timeout_id, (int) ((deadline - now) / 1000) + 1);
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
	if (lt.lease != 0 && !lt.dead && lt.timeout_id != MAX_TIMEOUTS &&
		!get_timeout_active(lt.timeout_id))
		lt_arm_timer();
}

/*
 * lt_arm_timer arms the deadline timer for the current lease.
 */
static void
lt_arm_timer(void)
{
	EtcdMono	left = etcd_my_slot()->deadline - etcd_mono_now();

	if (lt.timeout_id == MAX_TIMEOUTS)
		lt.timeout_id = RegisterTimeout(USER_TIMEOUT, lt_deadline_timeout);
	enable_timeout_after(lt.timeout_id, (int) Max(1, left / 1000 + 1));
}

bool
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
void
lt_forget_lease(StringInfo lost_names)
{
	if (lt.locks)
	{
		HASH_SEQ_STATUS seq;
		LocalLock  *e;

		hash_seq_init(&seq, lt.locks);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			if (lost_names && e->state == LT_HELD)
				appendStringInfo(lost_names, "%s\"%s\"",
								 lost_names->len ? ", " : "", e->name);
			lt_free_entry(e, LT_GONE_LEASE);
		}
	}
	if (lt.timeout_id != MAX_TIMEOUTS)
		disable_timeout(lt.timeout_id, false);
	if (lt.lease != 0)
	{
		EtcdLeaseSlot *slot = etcd_my_slot();

		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		if (slot->lease_id == lt.lease)
		{
			slot->state = LEASE_NONE;
			slot->nheld = 0;
		}
		LWLockRelease(etcd_shared->lock);
		(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, lt.lease, NULL, 0, 0, false, false, 0);
	}
	lt.lease = 0;
	lt.xact_acqs = 0;
}

/*
 * lt_held_names lists the names of the locks this backend holds, quoted.
 */
char *
lt_held_names(void)
{
	StringInfoData names;
	HASH_SEQ_STATUS seq;
	LocalLock  *e;

	initStringInfo(&names);
	if (lt.locks == NULL)
		return names.data;
	hash_seq_init(&seq, lt.locks);
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

	if (!in_hook && lt.lease != 0 && etcd_shared != NULL &&
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
		lt.loss_reported = true;
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

	if (lt.lease == 0 || lt.loss_reported || !lt_lease_lost())
		return;
	names = lt_held_names();
	if (names[0] == '\0')
		return;
	warn = etcd_lock_on_lease_loss == ON_LOSS_WARN;
	if (txn_control && !warn)
		return;
	lt.loss_reported = true;
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
void
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
void
lt_ensure_lease(void)
{
	EtcdLeaseSlot *slot;
	EtcdMono	sent;
	int			ttl = etcd_lock_lease_ttl;
	int64		id;

	if (lt.lease != 0)
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
			(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, want, NULL, 0, 0, false, true, 0);
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
	lt.lease = id;
	lt.dead = false;
	lt.loss_reported = false;
	lt_arm_timer();
	if (!lt.exit_registered)
	{
		before_shmem_exit(lt_backend_exit, 0);
		lt.exit_registered = true;
	}
	etcd_wake_worker();
}

/*
 * lt_value builds the JSON value stored in our key: who holds it.
 */
char *
lt_value(void)
{
	StringInfoData b;
	char		host[256];
	char		sysid[32];

	if (lt.database == NULL)
	{
		char	   *db = get_database_name(MyDatabaseId);
		char	   *user = GetUserNameFromId(GetSessionUserId(), true);

		lt.database = MemoryContextStrdup(TopMemoryContext, db ? db : "");
		lt.user = MemoryContextStrdup(TopMemoryContext, user ? user : "");
	}
	if (gethostname(host, sizeof(host)) != 0)
		host[0] = '\0';
	host[sizeof(host) - 1] = '\0';
	snprintf(sysid, sizeof(sysid), UINT64_FORMAT, GetSystemIdentifier());

	initStringInfo(&b);
	appendStringInfo(&b, "{\"instance\":\"%s\",\"host\":", sysid);
	escape_json(&b, host);
	appendStringInfo(&b, ",\"port\":%d,\"pid\":%d,\"database\":", PostPortNumber, MyProcPid);
	escape_json(&b, lt.database);
	appendStringInfoString(&b, ",\"user\":");
	escape_json(&b, lt.user);
	appendStringInfoString(&b, ",\"application_name\":");
	escape_json(&b, application_name ? application_name : "");
	appendStringInfoString(&b, ",\"acquired_at\":");
	escape_json(&b, timestamptz_to_str(GetCurrentTimestamp()));
	appendStringInfoChar(&b, '}');
	return b.data;
}
