/*
 * worker.c
 *		The etcd_lock background worker.
 *
 * Started by the postmaster (no database connection, so it runs on
 * primaries and hot standbys alike) and restarted one second after it
 * dies. One loop, and no request ever blocks it: every request runs on the
 * gateway's curl multi handle (etcd_async_*) while the loop goes on, so
 * its duties cannot starve each other:
 *	- loss detection, time-based: at each live lease's deadline the lease is
 *	  marked LOST and its holder signalled, whatever is in flight;
 *	- keepalives: every live lease is renewed every TTL/3, concurrently,
 *	  each bounded by the time left before its deadline; a lease's new
 *	  deadline is taken from the send time of the renewal that was answered;
 *	- releases queued by backends (transaction end, exit), sent
 *	  concurrently and retried; when etcd answers again after an outage,
 *	  every queued release goes out at once;
 *	- at shutdown (SIGTERM, sent to backends and the worker together) it
 *	  stays, bounded, until every backend has exited and its lease is
 *	  revoked, so a cleanly stopped instance frees its locks at once.
 * Backends do not trust the worker: they check their own deadline and arm
 * their own timer (locktable.c). The worker uses the same gateway and
 * request builders as the backends (lockops.c).
 */
#include "postgres.h"

#include <signal.h>
#include <unistd.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "postmaster/postmaster.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "gateway.h"
#include "guc.h"
#include "lockops.h"
#include "shmem.h"
#include "worker.h"

#define RETRY_MS		500		/* after a failed request */
#define MAX_INFLIGHT	24		/* requests in flight at once */
#define MAX_RELEASES_INFLIGHT 16	/* of which releases */
#define SUMMARY_MS		30000	/* outage summary in the log */

/*
 * The leases of this server's backends, kept on disk so that after a crash
 * restart (shared memory, and the lease IDs in it, are gone) the new worker
 * can revoke them at once instead of leaving their locks held for a TTL.
 * In pg_stat_tmp: pg_basebackup and pg_rewind skip its contents, so a
 * standby built from this server never revokes this server's leases; the
 * first line names the server (host, port, data directory) all the same.
 */
#define LEASES_FILE		"pg_stat_tmp/etcd_lock.leases"

typedef enum WorkerReqKind
{
	WR_FREE = 0,
	WR_KEEPALIVE,
	WR_RELEASE,
	WR_GRANT,					/* a lease for the pool */
	WR_RESOLVE					/* read a key to release whose revision is
								 * unknown */
} WorkerReqKind;

/* One request in flight; its index is the tag given to the gateway. */
#define RELEASE_BATCH 64		/* releases sent in one txn, at most */

typedef struct WorkerReq
{
	int			kind;			/* WorkerReqKind */
	int			index;			/* lease slot or release entry */
	int			nbatch;			/* WR_RELEASE: entries in batch (index is
								 * batch[0]) */
	int			batch[RELEASE_BATCH];
	int64		lease_id;
	EtcdMono	sent;
	int64		ttl;			/* keepalive answer; a grant: the TTL asked */
	int64		granted;		/* a grant's answer: the ID granted */
} WorkerReq;

static WorkerReq w_reqs[MAX_INFLIGHT];

/*
 * Renewals sent on the keepalive stream, oldest first: answers come in
 * send order, so each answer belongs to the head. Each must be answered
 * by answer_by, or the stream counts as broken.
 */
typedef struct KaSent
{
	int			slot;
	int64		lease_id;
	EtcdMono	sent;
	EtcdMono	answer_by;
} KaSent;

static KaSent *w_ka_fifo = NULL;	/* ring of nslots entries */
static int	w_ka_head = 0;
static int	w_ka_count = 0;
static EtcdMono w_ka_stream_retry_at = 0;	/* no new stream before this */
#define KA_STREAM_RETRY_MS	1000
static int	w_nreleases_inflight = 0;
/* a queue place of unknown revision found gone is read again this late */
#define RESOLVE_SETTLE_MS	(2L * etcd_lock_request_timeout + 7000L)
static int	w_batch_max = RELEASE_BATCH;	/* lowered when etcd refuses a
											 * batch as too many operations
											 * (its --max-txn-ops) */
static bool *w_ka_inflight = NULL;	/* per lease slot */

/* etcd reachability as the worker sees it, for state-change logs */
static bool w_reachable = true;
static EtcdMono w_down_since = 0;
static int64 w_failed = 0;		/* failed requests since the outage began */
static EtcdMono w_next_summary = 0;
static EtcdMono w_next_error_log = 0;
static char w_endpoint[256] = "";

static volatile sig_atomic_t w_shutdown = false;
static bool w_cred_check = false;	/* a credentials check is in flight */
static bool w_cred_retry = false;	/* ... is to be started again */
static uint32 w_cred_stamp = 0;	/* etcd_gateway_credentials_stamp now */

static void set_shared_error(char *dst, const char *msg);
static bool w_pool_granting[ETCD_LEASE_POOL];	/* a grant in flight */
static int64 w_pool_pending[ETCD_LEASE_POOL];	/* a grant not known to be
												 * applied or not: resent
												 * with the same ID */
static int	w_pool_pending_ttl[ETCD_LEASE_POOL];
static EtcdMono w_pool_pending_sent[ETCD_LEASE_POOL];	/* its first send:
														 * etcd's TTL may have
														 * started then */
static EtcdMono w_pool_retry_at = 0;
static uint64 w_leases_sig = 0;	/* what LEASES_FILE lists now */
static int	w_leases_n = -1;
static EtcdMono w_shutdown_at = 0;

/*
 * etcd_lock_register_worker registers the worker (from _PG_init).
 */
void
etcd_lock_register_worker(void)
{
	BackgroundWorker w;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS;
	w.bgw_start_time = BgWorkerStart_PostmasterStart;
	w.bgw_restart_time = 1;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "etcd_lock");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "etcd_lock_worker_main");
	snprintf(w.bgw_name, BGW_MAXLEN, "etcd_lock worker");
	snprintf(w.bgw_type, BGW_MAXLEN, "etcd_lock worker");
	RegisterBackgroundWorker(&w);
}

static void
worker_detach(int code, Datum arg)
{
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	if (etcd_shared->worker_pid == MyProcPid)
	{
		etcd_shared->worker_latch = NULL;
		etcd_shared->worker_pid = 0;
	}
	LWLockRelease(etcd_shared->lock);
}

/*
 * worker_sigterm: shut down, but only once the backends are gone and their
 * leases revoked (see worker_may_exit). Installed with SA_SIGINFO to learn
 * who sent it: the postmaster sends SIGTERM to a preloaded worker only to
 * stop the server, and then the worker exits 0 (a clean stop logs no
 * "exited with exit code 1", issue 23 item 9); from anyone else
 * (pg_terminate_backend, kill) it exits 1, so the postmaster starts it
 * again — exit 0 would unregister it until the next server start.
 */
static volatile sig_atomic_t w_server_stopping = false;

static void
worker_sigterm(int signo, siginfo_t *info, void *context)
{
	int			save_errno = errno;

	if (info != NULL && info->si_pid == PostmasterPid)
		w_server_stopping = true;
	w_shutdown = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

static void
worker_install_sigterm(void)
{
	struct sigaction act;

	memset(&act, 0, sizeof(act));
	act.sa_sigaction = worker_sigterm;
	sigemptyset(&act.sa_mask);
	act.sa_flags = SA_SIGINFO | SA_RESTART;
	if (sigaction(SIGTERM, &act, NULL) < 0)
		ereport(FATAL, (errmsg("etcd_lock worker: could not install its SIGTERM handler: %m")));
}

/*
 * w_catch runs fn(arg) and turns an ERROR it throws (a password file that
 * cannot be read when authenticating, out of memory) into a failure with
 * st filled, so the worker goes on instead of exiting and restarting.
 */
static bool
w_catch(bool (*fn) (void *arg, EtcdStatus *st), void *arg, EtcdStatus *st)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = false;

	PG_TRY();
	{
		ok = fn(arg, st);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		memset(st, 0, sizeof(*st));
		st->kind = ETCD_BAD_REPLY;
		snprintf(st->message, sizeof(st->message), "%s", edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

typedef struct AsyncArgs
{
	const char *path;
	const char *body;
	EtcdParseFn parse;
	void	   *parg;
	int			timeout_ms;
	int			tag;
} AsyncArgs;

static bool
async_start_fn(void *arg, EtcdStatus *st)
{
	AsyncArgs  *a = arg;

	return etcd_async_start(a->path, a->body, a->parse, a->parg, a->timeout_ms, a->tag, st);
}

/*
 * w_async_start is etcd_async_start for the worker: never throws.
 */
static bool
w_async_start(const char *path, const char *body, EtcdParseFn parse,
			  void *parg, int timeout_ms, int tag, EtcdStatus *st)
{
	AsyncArgs	a = {path, body, parse, parg, timeout_ms, tag};

	return w_catch(async_start_fn, &a, st);
}

static bool
stream_open_fn(void *arg, EtcdStatus *st)
{
	return etcd_ka_stream_open(st);
}

static bool
authenticate_fn(void *arg, EtcdStatus *st)
{
	return etcd_gateway_authenticate(st);
}

/*
 * lease_in_use says whether some backend still keeps lease_id alive.
 */
static bool
lease_in_use(int64 lease_id)
{
	int			i;
	bool		used = false;

	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	for (i = 0; i < etcd_shared->nslots && !used; i++)
		used = etcd_shared->slots[i].state == LEASE_LIVE &&
			etcd_shared->slots[i].lease_id == lease_id;
	LWLockRelease(etcd_shared->lock);
	return used;
}

static int
free_req(void)
{
	int			i;

	for (i = 0; i < MAX_INFLIGHT; i++)
		if (w_reqs[i].kind == WR_FREE)
			return i;
	return -1;
}

/*
 * publish_endpoint shows the endpoint the worker uses in etcd_lock_status.
 */
static void
publish_endpoint(void)
{
	char		err[300];

	if (!etcd_endpoints_ok(err, sizeof(err)))
		return;
	if (strcmp(w_endpoint, etcd_current_endpoint()) == 0)
		return;
	strlcpy(w_endpoint, etcd_current_endpoint(), sizeof(w_endpoint));
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	strlcpy(etcd_shared->endpoint, w_endpoint, sizeof(etcd_shared->endpoint));
	LWLockRelease(etcd_shared->lock);
}

/*
 * note_result keeps the worker's view of etcd's reachability and logs its
 * changes once (unreachable, reachable again), plus a summary every 30 s
 * of an outage: never a line per failed request.
 */
/*
 * retry_now lets everything that waits for a retry go at once: what waited
 * out an outage, or the authentication.
 */
static void
retry_now(EtcdMono now)
{
	int			i;

	w_ka_stream_retry_at = 0;
	w_pool_retry_at = 0;
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < etcd_shared->nrelused; i++)
		if (etcd_shared->releases[i].state == REL_PENDING)
			etcd_shared->releases[i].retry_at = 0;
	for (i = 0; i < etcd_shared->nslots; i++)
		if (etcd_shared->slots[i].state == LEASE_LIVE)
			etcd_shared->slots[i].next_keepalive =
				Min(etcd_shared->slots[i].next_keepalive, now);
	LWLockRelease(etcd_shared->lock);
}

static void
note_result(const EtcdStatus *st, bool ok)
{
	EtcdMono	now = etcd_mono_now();
	EtcdStatus	okst;

	if (st == NULL)
	{
		memset(&okst, 0, sizeof(okst));
		st = &okst;
	}
	/* not sent: it waits for the authentication in flight */
	if (!ok && st->kind == ETCD_AUTH_PENDING)
		return;

	publish_endpoint();
	/*
	 * etcd answered: a result, or an error of etcd's. An HTTP 404/405
	 * without etcd's error body comes from something that is not etcd's
	 * client API (its peer port, a path in the URL): not reachable.
	 */
	if (ok || (st->kind == ETCD_ERROR_REPLY &&
			   !(st->grpc_code == 0 && (st->http_status == 404 || st->http_status == 405))))
	{
		if (!w_reachable)
		{
			ereport(LOG,
					(errmsg("etcd_lock worker: etcd is reachable again after %.1f s (%lld requests failed meanwhile)",
							(double) (now - w_down_since) / 1000000.0, (long long) w_failed)));
			w_reachable = true;
			w_failed = 0;
			LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
			etcd_shared->etcd_reachable = true;
			etcd_shared->reachable_since = GetCurrentTimestamp();
			LWLockRelease(etcd_shared->lock);
			/* what waited out the outage goes now, not at its retry time */
			retry_now(now);
		}
		if (!ok)
			set_shared_error(etcd_shared->last_error, st->message);
		if (!ok && now >= w_next_error_log)
		{
			ereport(LOG,
					(errmsg("etcd_lock worker: etcd answered an error"),
					 errdetail("%s", st->message)));
			w_next_error_log = now + MONO_MS(10000);
		}
		return;
	}
	w_failed++;
	set_shared_error(etcd_shared->last_error, st->message);
	if (w_reachable)
	{
		ereport(LOG,
				(errmsg("etcd_lock worker: etcd is unreachable; renewals and releases are retried"),
				 errdetail("%s", st->message),
				 st->log_message[0] ? errdetail_log("%s", st->log_message) : 0));
		w_reachable = false;
		w_down_since = now;
		w_next_summary = now + MONO_MS(SUMMARY_MS);
		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		etcd_shared->etcd_reachable = false;
		etcd_shared->reachable_since = GetCurrentTimestamp();
		LWLockRelease(etcd_shared->lock);
	}
	else if (now >= w_next_summary)
	{
		ereport(LOG,
				(errmsg("etcd_lock worker: etcd still unreachable after %.0f s: %lld requests failed, %d releases queued",
						(double) (now - w_down_since) / 1000000.0, (long long) w_failed,
						etcd_shared->npending),
				 errdetail("%s", st->message)));
		w_next_summary = now + MONO_MS(SUMMARY_MS);
	}
}

/*
 * set_shared_error copies msg into one of etcd_lock_status's error
 * columns (dst: a field of etcd_shared), under the lock.
 */
static void
set_shared_error(char *dst, const char *msg)
{
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	strlcpy(dst, msg ? msg : "", sizeof(etcd_shared->last_error));
	LWLockRelease(etcd_shared->lock);
}

/*
 * start_credentials_check authenticates at once with the credentials a
 * reload set (etcd_gateway_recheck_credentials: the current token stays
 * until the new one is had); a check that cannot start (a bad password
 * file) is told like a refused one.
 */
static void
start_credentials_check(void)
{
	EtcdStatus	st;

	if (etcd_gateway_recheck_credentials(&st))
	{
		w_cred_check = true;
		return;
	}
	if (st.message[0])
	{
		ereport(LOG,
				(errmsg("etcd_lock worker: the changed etcd credentials cannot be used; the current token is kept until etcd rejects it"),
				 errdetail("%s", st.message)));
		set_shared_error(etcd_shared->auth_error, st.message);
	}
}

/*
 * finish_authentication takes the answer of the worker's authentication
 * (at start, after a rejected token, or a credentials check after a
 * reload): what waited for a token goes now; a failure is shown in
 * etcd_lock_status.auth_error, and logged once for a credentials check.
 */
static void
finish_authentication(EtcdAsyncResult *r)
{
	bool		check = w_cred_check;

	w_cred_check = false;
	if (r->ok)
	{
		set_shared_error(etcd_shared->auth_error, "");
		if (check)
			ereport(LOG,
					(errmsg("etcd_lock worker: authenticated to etcd with the changed credentials")));
		note_result(&r->st, true);
		retry_now(etcd_mono_now());
		return;
	}
	if (r->st.kind == ETCD_ERROR_REPLY)
	{
		/* etcd answered: wrong password, unknown user... */
		set_shared_error(etcd_shared->auth_error, r->st.message);
		if (check)
		{
			ereport(LOG,
					(errmsg("etcd_lock worker: etcd refused the changed credentials; the current token is kept until etcd rejects it"),
					 errdetail("%s", r->st.message)));
			publish_endpoint();
			return;
		}
	}
	else if (check)
		w_cred_retry = true;	/* not answered: check again next turn */
	note_result(&r->st, false);
}

/*
 * mark_lost marks a slot's lease LOST (caller holds the lock exclusively)
 * and signals its backend if it holds locks (etcd_signal_loss: once, as
 * etcd_lock.on_lease_loss says).
 */
static void
mark_lost(EtcdLeaseSlot *slot, bool expired)
{
	slot->state = LEASE_LOST;
	slot->loss_expired = expired;
	pg_atomic_fetch_add_u64(&etcd_shared->counters.leases_lost, 1);
	etcd_signal_loss(slot);
}

/*
 * check_deadlines marks lost every live lease whose deadline has passed,
 * whatever is in flight, and lowers *next to the earliest deadline ahead.
 */
static void
check_deadlines(EtcdMono now, EtcdMono *next)
{
	int			i;
	int			nlost = 0;
	int64		lost_ids[8];
	pid_t		lost_pids[8];

	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < etcd_shared->nslots; i++)
	{
		EtcdLeaseSlot *slot = &etcd_shared->slots[i];

		if (slot->state != LEASE_LIVE)
			continue;
		if (now >= slot->deadline)
		{
			mark_lost(slot, true);
			if (i >= etcd_shared->nbackends)
				continue;		/* a pool lease: replaced, nobody to tell */
			if (nlost < lengthof(lost_ids))
			{
				lost_ids[nlost] = slot->lease_id;
				lost_pids[nlost] = slot->pid;
			}
			nlost++;
		}
		else if (slot->deadline < *next)
			*next = slot->deadline;
	}
	LWLockRelease(etcd_shared->lock);
	for (i = 0; i < Min(nlost, lengthof(lost_ids)); i++)
		ereport(LOG,
				(errmsg("etcd_lock worker: lease %llx of backend pid %d is lost: no successful renewal before its deadline",
						(unsigned long long) lost_ids[i], (int) lost_pids[i])));
	if (nlost > lengthof(lost_ids))
		ereport(LOG,
				(errmsg("etcd_lock worker: %d more leases lost at their deadline",
						nlost - (int) lengthof(lost_ids))));
}

/*
 * start_keepalives sends a renewal for every live lease that is due and
 * has none in flight, each bounded by the time left before its deadline.
 */
static void
start_keepalives(EtcdMono now, EtcdMono *next)
{
	int			i;
	typedef struct
	{
		int64		lease;
		EtcdMono	deadline;
		EtcdMono	due;
	}			SlotView;
	SlotView   *view = palloc0(sizeof(SlotView) * etcd_shared->nslots);

	/*
	 * Renewals due within a short window are sent together (their phase is
	 * kept: the next one is due a period after this one was, see
	 * apply_renewal): one wakeup and one write for a group of leases, not
	 * one per lease. At most 1/8 of a period, 250 ms.
	 */
	EtcdMono	coalesce = MONO_MS(Min(250L, etcd_lock_lease_ttl * 1000L / 3 / 8));

	/* one look at the slots under one lock, not one lock per slot */
	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	for (i = 0; i < etcd_shared->nslots; i++)
	{
		EtcdLeaseSlot *slot = &etcd_shared->slots[i];

		if (slot->state == LEASE_LIVE && !w_ka_inflight[i])
		{
			view[i].lease = slot->lease_id;
			view[i].deadline = slot->deadline;
			view[i].due = slot->next_keepalive;
		}
	}
	LWLockRelease(etcd_shared->lock);

	for (i = 0; i < etcd_shared->nslots; i++)
	{
		EtcdLeaseSlot *slot = &etcd_shared->slots[i];
		int64		lease = view[i].lease;
		EtcdMono	deadline = view[i].deadline,
					due = view[i].due;
		int			r;
		long		left_ms;
		EtcdStatus	st;

		if (lease == 0 || deadline <= now)
			continue;
		if (due > now + coalesce)
		{
			if (due < *next)
				*next = due;
			continue;
		}
		/*
		 * Bounded by a share of the time left before the deadline, so that
		 * a member that accepts but never answers leaves time to renew
		 * through the next one (a failure moves requests on to it).
		 */
		left_ms = (long) ((deadline - now) / 1000) / Max(2, etcd_endpoint_count());
		left_ms = Max(1, Min(left_ms, etcd_lock_request_timeout));

		/* on the stream, if there is one or one can be opened */
		if (!etcd_ka_stream_usable() && w_ka_count == 0 && now >= w_ka_stream_retry_at)
		{
			if (!w_catch(stream_open_fn, NULL, &st))
			{
				note_result(&st, false);
				w_ka_stream_retry_at = now + MONO_MS(KA_STREAM_RETRY_MS);
			}
		}
		if (etcd_ka_stream_usable() && etcd_ka_stream_send(lease))
		{
			KaSent	   *k = &w_ka_fifo[(w_ka_head + w_ka_count) % etcd_shared->nslots];

			k->slot = i;
			k->lease_id = lease;
			k->sent = now;
			k->answer_by = now + MONO_MS(left_ms);
			w_ka_count++;
			w_ka_inflight[i] = true;
			continue;
		}

		/* one-shot, while the stream cannot be had */
		r = free_req();
		if (r < 0)
			return;				/* due, but no room: a completion wakes us */
		w_reqs[r].kind = WR_KEEPALIVE;
		w_reqs[r].index = i;
		w_reqs[r].lease_id = lease;
		w_reqs[r].sent = now;
		w_reqs[r].ttl = 0;
		/* a renewal only extends a lease: safe to resend */
		if (!w_async_start("/v3/lease/keepalive", etcd_lease_body(lease),
							  etcd_parse_keepalive, &w_reqs[r].ttl, (int) left_ms,
							  r, &st))
		{
			w_reqs[r].kind = WR_FREE;
			note_result(&st, false);
			LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
			if (slot->state == LEASE_LIVE && slot->lease_id == lease)
				slot->next_keepalive = Min(deadline, now + MONO_MS(RETRY_MS));
			LWLockRelease(etcd_shared->lock);
			continue;
		}
		w_ka_inflight[i] = true;
	}
}

/*
 * apply_renewal applies the outcome of the renewal of lease (sent at sent)
 * to its slot: ok with ttl > 0, renewed; ok with ttl 0, etcd says it is
 * gone; not ok, retried. The new deadline counts from the send time of the
 * renewal answered, never a later one; a deadline that has already passed
 * is never extended (a lease once counted lost stays lost, even if etcd
 * still had it).
 */
static void
apply_renewal(int index, int64 lease, EtcdMono sent, bool ok, int64 ttl,
			  const EtcdStatus *st)
{
	EtcdLeaseSlot *slot = &etcd_shared->slots[index];
	EtcdMono	now = etcd_mono_now();
	bool		lost = false;

	w_ka_inflight[index] = false;
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	if (slot->state == LEASE_LIVE && slot->lease_id == lease)
	{
		if (ok && ttl > 0 && now < slot->deadline)
		{
			int			newttl = (int) Min(slot->ttl, ttl);

			if (sent > slot->renewed_at)
			{
				slot->renewed_at = sent;
				slot->deadline = Max(slot->deadline, LEASE_DEADLINE(sent, newttl));
			}
			/*
			 * A period after it was due (a renewal sent early with a group
			 * keeps its lease's phase, so the rate stays one per period),
			 * or after it was sent if that was later (retries). Sent at
			 * most 250 ms early, so the next one is sent well before the
			 * deadline this one set.
			 */
			slot->next_keepalive = Max(sent, slot->next_keepalive) +
				MONO_MS(slot->ttl * 1000L / 3);
		}
		else if (ok)
		{
			mark_lost(slot, ttl > 0);
			lost = true;
		}
		else
		{
			/*
			 * A member that hung used up part of the time before the
			 * deadline: with another member to try, retry at once. A quick
			 * failure (refused connection) waits, or every member down
			 * would turn into a request storm.
			 */
			long		retry = st && st->kind == ETCD_UNREACHABLE &&
				etcd_endpoint_count() > 1 && now - sent > MONO_MS(100) ? 0 : RETRY_MS;

			slot->next_keepalive = Min(slot->deadline, now + MONO_MS(retry));
		}
	}
	LWLockRelease(etcd_shared->lock);
	if (lost)
		ereport(LOG,
				(errmsg("etcd_lock worker: lease %llx of backend pid %d is lost: %s",
						(unsigned long long) lease, (int) slot->pid,
						ttl > 0 ? "renewed only after its deadline" :
						"etcd says it no longer exists")));
}

static void
finish_keepalive(WorkerReq *req, EtcdAsyncResult *res)
{
	note_result(&res->st, res->ok);
	apply_renewal(req->index, req->lease_id, req->sent, res->ok, req->ttl, &res->st);
}

/*
 * ka_stream_fail closes a keepalive stream that broke, stalled or answered
 * out of order: every renewal on it not yet answered is retried at once
 * (as one-shot requests until a new stream opens, in a second).
 */
static void
ka_stream_fail(const char *why)
{
	EtcdStatus	st;

	etcd_ka_stream_close(true);
	memset(&st, 0, sizeof(st));
	st.kind = ETCD_UNREACHABLE;
	snprintf(st.message, sizeof(st.message), "%s: keepalive stream %s",
			 etcd_current_endpoint(), why);
	note_result(&st, false);
	while (w_ka_count > 0)
	{
		KaSent	   *k = &w_ka_fifo[w_ka_head];

		w_ka_head = (w_ka_head + 1) % etcd_shared->nslots;
		w_ka_count--;
		apply_renewal(k->slot, k->lease_id, k->sent, false, 0, &st);
	}
	w_ka_stream_retry_at = etcd_mono_now() + MONO_MS(KA_STREAM_RETRY_MS);
}

/*
 * ka_stream_reopen closes the keepalive stream after a reload changed
 * etcd_lock.endpoints, so renewals go to the new list as the backends'
 * requests do (the next renewal opens a new stream). Renewals sent on it
 * and not yet answered are retried at once; this is no failure of etcd.
 */
static void
ka_stream_reopen(void)
{
	EtcdStatus	st;

	ereport(LOG,
			(errmsg("etcd_lock worker: etcd_lock.endpoints changed; the keepalive stream reopens on the new endpoints")));
	if (!etcd_ka_stream_active())
		return;
	etcd_ka_stream_close(false);
	memset(&st, 0, sizeof(st));
	st.kind = ETCD_UNREACHABLE;
	snprintf(st.message, sizeof(st.message), "keepalive stream closed: etcd_lock.endpoints changed");
	while (w_ka_count > 0)
	{
		KaSent	   *k = &w_ka_fifo[w_ka_head];

		w_ka_head = (w_ka_head + 1) % etcd_shared->nslots;
		w_ka_count--;
		apply_renewal(k->slot, k->lease_id, k->sent, false, 0, &st);
	}
	w_ka_stream_retry_at = 0;
}

/*
 * ka_stream_collect pairs the stream's answers with the renewals sent, in
 * order, and checks that the oldest unanswered one is not overdue.
 */
static void
ka_stream_collect(EtcdMono *next)
{
	EtcdKaResult res[64];
	int			n,
				i;

	while ((n = etcd_ka_stream_results(res, lengthof(res))) > 0)
	{
		for (i = 0; i < n; i++)
		{
			KaSent		k;

			if (w_ka_count == 0 || w_ka_fifo[w_ka_head].lease_id != res[i].lease_id)
			{
				ka_stream_fail("answered out of order");
				return;
			}
			k = w_ka_fifo[w_ka_head];
			w_ka_head = (w_ka_head + 1) % etcd_shared->nslots;
			w_ka_count--;
			note_result(NULL, true);
			apply_renewal(k.slot, k.lease_id, k.sent, true, res[i].ttl, NULL);
		}
	}
	if (w_ka_count == 0 && etcd_ka_stream_active() && !etcd_ka_stream_usable())
		etcd_ka_stream_close(false);	/* ended while idle: reopen when needed */
	if (w_ka_count > 0)
	{
		EtcdMono	now = etcd_mono_now();

		if (!etcd_ka_stream_usable())
			ka_stream_fail("ended");
		else if (now >= w_ka_fifo[w_ka_head].answer_by)
			ka_stream_fail("timed out");
		else if (w_ka_fifo[w_ka_head].answer_by < *next)
			*next = w_ka_fifo[w_ka_head].answer_by;
	}
}

/*
 * refill_pool keeps ETCD_LEASE_POOL leases granted ahead, so a backend's
 * first lock needs no grant (etcd_adopt_pooled_lease). Pool leases are
 * renewed like any other (their slots come after the backends'); one that
 * was lost or has another TTL than the setting's is revoked and replaced.
 * Each grant uses an ID chosen here: safe to resend, no orphan lease.
 */
static void
refill_pool(EtcdMono now, EtcdMono *next)
{
	int			i,
				ttl = etcd_lock_lease_ttl;

	if (w_shutdown)
		return;
	if (now < w_pool_retry_at)
	{
		if (w_pool_retry_at < *next)
			*next = w_pool_retry_at;
		return;
	}
	for (i = etcd_shared->nbackends; i < etcd_shared->nslots; i++)
	{
		EtcdLeaseSlot *p = &etcd_shared->slots[i];
		int64		stale = 0;
		bool		empty;
		int			r;
		char	   *body;
		int			gttl;		/* this grant's TTL: a resend keeps its
								 * own, ttl stays the setting's */
		EtcdStatus	st;

		if (w_pool_granting[i - etcd_shared->nbackends] || w_ka_inflight[i])
			continue;
		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		if (p->state == LEASE_LOST || (p->state == LEASE_LIVE && p->ttl != ttl))
		{
			stale = p->lease_id;
			p->state = LEASE_NONE;
			p->lease_id = 0;
		}
		empty = p->state == LEASE_NONE;
		LWLockRelease(etcd_shared->lock);
		if (stale != 0)
			(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, stale, NULL, 0, 0, false, true);
		if (!empty)
			continue;
		r = free_req();
		if (r < 0)
			return;
		w_reqs[r].kind = WR_GRANT;
		w_reqs[r].index = i;
		{
			int			pi = i - etcd_shared->nbackends;

			/* an unconfirmed grant is resent as it was: no orphan lease */
			if (w_pool_pending[pi] != 0)
			{
				w_reqs[r].lease_id = w_pool_pending[pi];
				gttl = w_pool_pending_ttl[pi];
				body = psprintf("{\"ID\":\"" INT64_FORMAT "\",\"TTL\":\"%d\"}",
								w_pool_pending[pi], gttl);
			}
			else
			{
				gttl = ttl;
				w_reqs[r].lease_id = etcd_new_lease_id(gttl, &body);
				w_pool_pending[pi] = w_reqs[r].lease_id;
				w_pool_pending_ttl[pi] = gttl;
				w_pool_pending_sent[pi] = now;
			}
			/*
			 * The lease's deadline counts from the first send of its ID:
			 * a resend answered "exists" (or a first grant applied late)
			 * says nothing of when etcd started the TTL, only that it was
			 * no earlier than that.
			 */
			w_reqs[r].sent = w_pool_pending_sent[pi];
		}
		w_reqs[r].ttl = gttl;
		w_reqs[r].granted = 0;
		if (!w_async_start("/v3/lease/grant", body, etcd_parse_lease_grant,
							  &w_reqs[r].granted, etcd_lock_request_timeout, r, &st))
		{
			w_reqs[r].kind = WR_FREE;
			note_result(&st, false);
			w_pool_retry_at = now + MONO_MS(KA_STREAM_RETRY_MS);
			return;
		}
		w_pool_granting[i - etcd_shared->nbackends] = true;
	}
}

/*
 * finish_grant puts a lease granted ahead into its pool slot (or revokes it
 * if it is no longer wanted).
 */
static void
finish_grant(WorkerReq *req, EtcdAsyncResult *res)
{
	EtcdLeaseSlot *p = &etcd_shared->slots[req->index];
	bool		ours = (res->ok && req->granted == req->lease_id) ||
		(!res->ok && res->st.kind == ETCD_ERROR_REPLY &&
		 res->st.grpc_code == GRPC_FAILED_PRECONDITION);	/* our resent grant */
	bool		placed = false;

	w_pool_granting[req->index - etcd_shared->nbackends] = false;
	note_result(&res->st, res->ok || res->st.kind == ETCD_ERROR_REPLY);
	if (ours || res->st.kind == ETCD_ERROR_REPLY)
		w_pool_pending[req->index - etcd_shared->nbackends] = 0;	/* settled */
	if (!ours)
	{
		/*
		 * etcd refused this attempt (429, permission...), which settles
		 * it, but an earlier attempt of the same ID (a lost answer) may
		 * have been applied: revoke the ID rather than forget it ("not
		 * found" counts as done).
		 */
		if (res->st.kind == ETCD_ERROR_REPLY)
			(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, req->lease_id, NULL, 0, 0, false, true);
		w_pool_retry_at = etcd_mono_now() + MONO_MS(KA_STREAM_RETRY_MS);
		return;
	}
	if (!w_shutdown && req->ttl == etcd_lock_lease_ttl)
	{
		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		if (p->state == LEASE_NONE)
		{
			p->pid = 0;
			p->lease_id = req->lease_id;
			p->ttl = (int) req->ttl;
			p->renewed_at = req->sent;
			p->deadline = LEASE_DEADLINE(req->sent, p->ttl);
			p->next_keepalive = req->sent + MONO_MS(p->ttl * 1000L / 3);
			p->on_loss = ON_LOSS_CANCEL;
			p->loss_expired = false;
			p->nheld = 0;
			pg_atomic_write_u32(&p->loss_signalled, 0);
			p->state = LEASE_LIVE;
			placed = true;
		}
		LWLockRelease(etcd_shared->lock);
	}
	if (!placed)
		(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, req->lease_id, NULL, 0, 0, false, true);
}

/*
 * collect_batch adds to req (whose first entry is a compare-and-delete
 * release, already marked busy) the other due compare-and-delete releases,
 * up to RELEASE_BATCH, marking them busy and attempted.
 */
static void
collect_batch(WorkerReq *req, EtcdMono now)
{
	int			i;

	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	for (i = req->batch[0] + 1; i < etcd_shared->nrelused && req->nbatch < w_batch_max; i++)
	{
		EtcdRelease *e = &etcd_shared->releases[i];

		if (e->state != REL_PENDING || e->retry_at > now ||
			e->kind != REL_DELETE || e->token == 0 || e->alone)
			continue;
		e->state = REL_BUSY;
		e->attempted = true;
		req->batch[req->nbatch++] = i;
	}
	LWLockRelease(etcd_shared->lock);
}

/*
 * start_releases sends every due queued release, up to the limit in
 * flight. From the moment one is taken it counts as attempted: it may
 * reach etcd, so it is never taken back (shmem.c).
 */
static void
start_releases(EtcdMono now, EtcdMono *next)
{
	while (w_nreleases_inflight < MAX_RELEASES_INFLIGHT)
	{
		EtcdRelease rel;
		int			i,
					idx = -1,
					r = free_req();
		const char *path;
		char	   *body;
		EtcdStatus	st;

		if (r < 0)
			return;
		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		for (i = 0; i < etcd_shared->nrelused && etcd_shared->npending > 0; i++)
		{
			EtcdRelease *e = &etcd_shared->releases[i];

			if (e->state != REL_PENDING)
				continue;
			if (e->retry_at > now)
			{
				if (e->retry_at < *next)
					*next = e->retry_at;
				continue;
			}
			e->state = REL_BUSY;
			e->attempted = true;
			memcpy(&rel, e, sizeof(rel));
			idx = i;
			break;
		}
		LWLockRelease(etcd_shared->lock);
		if (idx < 0)
			return;

		w_reqs[r].kind = WR_RELEASE;
		w_reqs[r].nbatch = 1;
		w_reqs[r].batch[0] = idx;
		if (rel.kind == REL_DELETE && rel.token != 0 && !rel.alone)
			collect_batch(&w_reqs[r], now);
		if (w_reqs[r].nbatch > 1)
		{
			/*
			 * Several releases due at once (a ROLLBACK of many xact locks, a
			 * backend's exit): one txn, each key compared and deleted in a
			 * nested txn of its own.
			 */
			char	  **keys = palloc(sizeof(char *) * w_reqs[r].nbatch);
			int		   *lens = palloc(sizeof(int) * w_reqs[r].nbatch);
			int64	   *toks = palloc(sizeof(int64) * w_reqs[r].nbatch);

			LWLockAcquire(etcd_shared->lock, LW_SHARED);
			for (i = 0; i < w_reqs[r].nbatch; i++)
			{
				EtcdRelease *e = &etcd_shared->releases[w_reqs[r].batch[i]];

				keys[i] = pnstrdup(e->key, e->keylen);
				lens[i] = e->keylen;
				toks[i] = e->token;
			}
			LWLockRelease(etcd_shared->lock);
			path = "/v3/kv/txn";
			body = etcd_release_batch_body(keys, lens, toks, w_reqs[r].nbatch);
		}
		else if (rel.kind == REL_REVOKE)
		{
			/* safe to resend: a revoked lease answers "not found" */
			path = "/v3/lease/revoke";
			body = etcd_lease_body(rel.lease_id);
		}
		else if (rel.token == 0)
		{
			/*
			 * A queue place whose revision is unknown (its acquire was cut
			 * short): read it first, then delete it by revision. A plain
			 * delete applied late could remove a newer key of the same
			 * name; a compare on the revision cannot.
			 */
			path = "/v3/kv/range";
			body = etcd_key_range_body(rel.key, rel.keylen);
			w_reqs[r].kind = WR_RESOLVE;
			w_reqs[r].granted = 0;
		}
		else
			path = etcd_release_request(rel.key, rel.keylen, rel.token, &body);
		w_reqs[r].index = idx;
		w_reqs[r].lease_id = rel.lease_id;
		w_reqs[r].sent = now;
		if (!w_async_start(path, body,
						   w_reqs[r].kind == WR_RESOLVE ? etcd_parse_create_rev : NULL,
						   w_reqs[r].kind == WR_RESOLVE ? &w_reqs[r].granted : NULL,
						   etcd_lock_request_timeout, r, &st))
		{
			w_reqs[r].kind = WR_FREE;
			note_result(&st, false);
			LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
			for (i = 0; i < w_reqs[r].nbatch; i++)
			{
				etcd_shared->releases[w_reqs[r].batch[i]].state = REL_PENDING;
				etcd_shared->releases[w_reqs[r].batch[i]].retry_at = now + MONO_MS(RETRY_MS);
			}
			LWLockRelease(etcd_shared->lock);
			ConditionVariableBroadcast(&etcd_shared->release_cv);
			return;
		}
		w_nreleases_inflight++;
	}
}

/*
 * finish_release frees the queue entry once etcd confirmed the release, or
 * schedules a retry. A release is given up only when it no longer matters:
 * its lease is not renewed by anyone and has outlived its TTL since queued.
 */
static void finish_release_entry(int index, EtcdAsyncResult *res);

static void
finish_release(WorkerReq *req, EtcdAsyncResult *res)
{
	int			i;

	w_nreleases_inflight--;
	note_result(&res->st, res->ok ||
				(res->st.kind == ETCD_ERROR_REPLY && res->st.grpc_code == GRPC_NOT_FOUND));
	if (!res->ok && req->nbatch > 1 && res->st.kind == ETCD_ERROR_REPLY &&
		(res->st.grpc_code == GRPC_INVALID_ARGUMENT ||
		 res->st.grpc_code == GRPC_PERMISSION_DENIED))
	{
		bool		too_big = res->st.grpc_code == GRPC_INVALID_ARGUMENT;

		/*
		 * etcd refused the batch as a whole, which says nothing of each
		 * release in it: more nested txns than its --max-txn-ops
		 * (configurable below our batch size), or one key under a prefix
		 * whose write permission was taken away (the batch mixes every
		 * backend's releases). Too big: send smaller batches from now on,
		 * halving down to single releases, which any etcd takes.
		 * Permission: these entries go alone, so only the refused one is
		 * given up (as a single release is). Each is retried at once.
		 */
		/*
		 * Only a batch within the current limit lowers it: one sent before
		 * an earlier refusal lowered the limit says nothing new.
		 */
		if (too_big && req->nbatch <= w_batch_max)
			w_batch_max = Max(1, req->nbatch / 2);
		ereport(LOG,
				(errmsg("etcd_lock worker: etcd refused a batch of %d releases (%s); %s",
						req->nbatch, res->st.message,
						too_big ? psprintf("sending at most %d per request", w_batch_max) :
						"sending them one at a time")));
		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		for (i = 0; i < req->nbatch; i++)
		{
			EtcdRelease *e = &etcd_shared->releases[req->batch[i]];

			e->state = REL_PENDING;
			e->retry_at = 0;
			e->alone = e->alone || !too_big;
		}
		LWLockRelease(etcd_shared->lock);
		ConditionVariableBroadcast(&etcd_shared->release_cv);
		return;
	}
	for (i = 0; i < req->nbatch; i++)
		finish_release_entry(req->batch[i], res);
	ConditionVariableBroadcast(&etcd_shared->release_cv);
}

/*
 * finish_release_entry: the outcome of one release of a request.
 */
static void
finish_release_entry(int index, EtcdAsyncResult *res)
{
	EtcdRelease *e = &etcd_shared->releases[index];
	EtcdMono	now = etcd_mono_now();
	bool		ok = res->ok,
				give_up = false;
	bool		revoke = e->kind == REL_REVOKE;

	if (!ok && revoke && res->st.kind == ETCD_ERROR_REPLY &&
		res->st.grpc_code == GRPC_NOT_FOUND)
		ok = true;				/* already gone */
	if (!ok)
		give_up = (now > e->queued_at + MONO_MS(etcd_lock_lease_ttl * 1000L) &&
				   (revoke || !lease_in_use(e->lease_id))) ||
			/* refused for good: the lease's end (revoke, expiry) removes it */
			(res->st.kind == ETCD_ERROR_REPLY && res->st.grpc_code == GRPC_PERMISSION_DENIED);
	if (give_up)
		ereport(LOG,
				(errmsg("etcd_lock worker: gave up %s of lease %llx: %s",
						revoke ? "the revoke" : "a release",
						(unsigned long long) e->lease_id,
						res->st.grpc_code == GRPC_PERMISSION_DENIED ?
						"etcd refuses it (permission denied); the lease's end removes the key" :
						"its lease has expired by now")));
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	e->tried = true;
	if (ok || give_up)
	{
		e->state = REL_FREE;
		etcd_shared->npending--;
	}
	else
	{
		e->state = REL_PENDING;
		e->retry_at = now + MONO_MS(RETRY_MS);
	}
	LWLockRelease(etcd_shared->lock);
}

/*
 * leases_file_header names this server in the first line of LEASES_FILE.
 */
static char *
leases_file_header(void)
{
	char		host[256];

	if (gethostname(host, sizeof(host)) != 0)
		host[0] = '\0';
	host[sizeof(host) - 1] = '\0';
	return psprintf("etcd_lock leases of %s:%d %s", host, PostPortNumber, DataDir);
}

/*
 * record_leases rewrites LEASES_FILE when the set of leases in the slots
 * changed. Not fsync'd: it matters after a crash restart, when the OS
 * still has it; after an OS crash the leases have expired anyway.
 */
static void
record_leases(void)
{
	uint64		sig = 0;
	int			n = 0,
				i;
	/* a lease and a grant in flight per slot, and the pool's grants */
	int64	   *ids = palloc(sizeof(int64) * (2 * etcd_shared->nslots + ETCD_LEASE_POOL));
	StringInfoData b;
	FILE	   *f;

	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	for (i = 0; i < etcd_shared->nslots; i++)
	{
		EtcdLeaseSlot *slot = &etcd_shared->slots[i];

		if (slot->state != LEASE_NONE)
		{
			ids[n++] = slot->lease_id;
			sig ^= (uint64) slot->lease_id * UINT64CONST(0x9E3779B97F4A7C15);
		}
		/* a backend's grant not answered yet: it may exist in etcd */
		if (slot->granting_id != 0 &&
			(slot->state == LEASE_NONE || slot->granting_id != slot->lease_id))
		{
			ids[n++] = slot->granting_id;
			sig ^= (uint64) slot->granting_id * UINT64CONST(0x9E3779B97F4A7C15);
		}
	}
	LWLockRelease(etcd_shared->lock);
	/* grants in flight or unconfirmed: they may exist in etcd */
	for (i = 0; i < ETCD_LEASE_POOL; i++)
		if (w_pool_pending[i] != 0)
		{
			ids[n++] = w_pool_pending[i];
			sig ^= (uint64) w_pool_pending[i] * UINT64CONST(0x9E3779B97F4A7C15);
		}
	if (n == w_leases_n && sig == w_leases_sig)
		return;
	initStringInfo(&b);
	appendStringInfo(&b, "%s\n", leases_file_header());
	for (i = 0; i < n; i++)
		appendStringInfo(&b, INT64_FORMAT "\n", ids[i]);
	/* whatever happens below, do not retry (and log) at every turn */
	w_leases_n = n;
	w_leases_sig = sig;
	f = AllocateFile(LEASES_FILE ".tmp", PG_BINARY_W);
	if (f == NULL || fwrite(b.data, 1, b.len, f) != (size_t) b.len)
	{
		if (f)
			FreeFile(f);
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("etcd_lock worker: could not write \"%s\": %m", LEASES_FILE ".tmp")));
		return;
	}
	if (FreeFile(f) != 0 || rename(LEASES_FILE ".tmp", LEASES_FILE) != 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("etcd_lock worker: could not write \"%s\": %m", LEASES_FILE)));
		return;
	}
	w_leases_n = n;
	w_leases_sig = sig;
}

/*
 * revoke_previous_leases queues the revoke of every lease the previous run
 * of this server recorded (once per shared memory: at server start and
 * after a crash restart, not when only the worker restarts). Its backends
 * are gone; their locks are freed now rather than after a TTL.
 */
static void
revoke_previous_leases(void)
{
	FILE	   *f;
	char		line[2048];
	char	   *header = leases_file_header();
	int			n = 0;

	if (etcd_shared->leases_recovered)
		return;
	etcd_shared->leases_recovered = true;
	f = AllocateFile(LEASES_FILE, PG_BINARY_R);
	if (f == NULL)
		return;
	if (fgets(line, sizeof(line), f) != NULL &&
		strncmp(line, header, strlen(header)) == 0 && line[strlen(header)] == '\n')
	{
		while (fgets(line, sizeof(line), f) != NULL)
		{
			char	   *end;
			long long	id = strtoll(line, &end, 10);

			if (id > 0 && (*end == '\n' || *end == '\0') &&
				etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, (int64) id, NULL, 0, 0, false, true))
				n++;
		}
	}
	FreeFile(f);
	if (n > 0)
		ereport(LOG,
				(errmsg("etcd_lock worker: revoking %d lease(s) of this server's previous run", n)));
}

/*
 * endpoints_usable: an invalid etcd_lock.endpoints (accepted at server
 * start, see guc.c) stops all sending, with one LOG line, until a reload
 * fixes it; leases then count as lost at their deadlines as usual.
 */
static bool
endpoints_usable(void)
{
	static bool said = false;
	char		err[300];

	if (etcd_endpoints_ok(err, sizeof(err)))
	{
		said = false;
		return true;
	}
	if (!said)
		ereport(LOG,
				(errmsg("etcd_lock worker: etcd_lock.endpoints is invalid: \"%s\"; nothing is sent to etcd until it is fixed",
						etcd_lock_endpoints ? etcd_lock_endpoints : ""),
				 errdetail("%s", err)));
	said = true;
	return false;
}

/*
 * finish_resolve: the key to release is gone (done), or its revision is
 * now known (the compare-and-delete goes next).
 */
static void
finish_resolve(WorkerReq *req, EtcdAsyncResult *res)
{
	EtcdRelease *e = &etcd_shared->releases[req->index];
	bool		live;

	w_nreleases_inflight--;
	note_result(&res->st, res->ok);
	live = res->ok && req->granted == 0 && lease_in_use(e->lease_id);
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	if (live &&
		(e->settle_at == 0 || etcd_mono_now() < e->settle_at))
	{
		/*
		 * Not there (yet). The acquire cut short may still be on its way
		 * (delayed in the network, or proposed and not yet applied) and
		 * create the key later under a lease that lives on: read again
		 * once it must have been applied or failed (etcd gives a proposal
		 * 5 s plus two election timeouts, 7 s by default; the backend's
		 * request lasted request_timeout at most), and only then let it
		 * go. A lease no longer in use needs no wait: a late put under it
		 * fails.
		 */
		if (e->settle_at == 0)
			e->settle_at = e->queued_at + MONO_MS(RESOLVE_SETTLE_MS);
		e->tried = true;		/* nobody waits for the second read */
		e->state = REL_PENDING;
		e->retry_at = e->settle_at;
	}
	else if ((res->ok && req->granted == 0) ||
			 (res->st.kind == ETCD_ERROR_REPLY && res->st.grpc_code == GRPC_PERMISSION_DENIED))
	{
		e->tried = true;
		e->state = REL_FREE;
		etcd_shared->npending--;
	}
	else
	{
		if (res->ok)
			e->token = req->granted;
		e->state = REL_PENDING;
		e->retry_at = res->ok ? 0 : etcd_mono_now() + MONO_MS(RETRY_MS);
	}
	LWLockRelease(etcd_shared->lock);
	ConditionVariableBroadcast(&etcd_shared->release_cv);
}

/*
 * worker_may_exit: at shutdown, once no backend keeps a lease and nothing
 * is queued or in flight, or after a bound (twice the request timeout, at
 * least 5 s) if etcd cannot be reached.
 */
static bool
worker_may_exit(EtcdMono now)
{
	int			i;
	bool		busy = etcd_async_inflight() > 0;

	if (w_shutdown_at == 0)
	{
		w_shutdown_at = now;
		/* the pool's leases: nobody will adopt them now */
		for (i = 0; i < ETCD_LEASE_POOL; i++)
			if (w_pool_pending[i] != 0 && !w_pool_granting[i])
				(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, w_pool_pending[i], NULL, 0, 0, false, true);
		for (i = etcd_shared->nbackends; i < etcd_shared->nslots; i++)
		{
			EtcdLeaseSlot *p = &etcd_shared->slots[i];
			int64		id = 0;

			LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
			if (p->state != LEASE_NONE)
			{
				id = p->lease_id;
				p->state = LEASE_NONE;
				p->lease_id = 0;
			}
			LWLockRelease(etcd_shared->lock);
			if (id != 0)
				(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, id, NULL, 0, 0, false, true);
		}
	}
	if (now >= w_shutdown_at + MONO_MS(Max(5000, 2L * etcd_lock_request_timeout)))
		return true;
	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	busy = busy || etcd_shared->npending > 0;
	for (i = 0; i < etcd_shared->nslots && !busy; i++)
		busy = etcd_shared->slots[i].state == LEASE_LIVE;
	LWLockRelease(etcd_shared->lock);
	return !busy;
}

void
etcd_lock_worker_main(Datum arg)
{
	MemoryContext cxt;
	int			i;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	worker_install_sigterm();
	BackgroundWorkerUnblockSignals();

	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	etcd_shared->worker_latch = MyLatch;
	etcd_shared->worker_pid = MyProcPid;
	/* a release the previous worker was sending when it died: send again */
	for (i = 0; i < etcd_shared->nreleases; i++)
		if (etcd_shared->releases[i].state == REL_BUSY)
			etcd_shared->releases[i].state = REL_PENDING;
	LWLockRelease(etcd_shared->lock);
	on_shmem_exit(worker_detach, 0);

	w_ka_inflight = MemoryContextAllocZero(TopMemoryContext,
										   sizeof(bool) * etcd_shared->nslots);
	w_ka_fifo = MemoryContextAllocZero(TopMemoryContext,
									   sizeof(KaSent) * etcd_shared->nslots);
	cxt = AllocSetContextCreate(TopMemoryContext, "etcd_lock worker",
								ALLOCSET_DEFAULT_SIZES);
	ereport(LOG, (errmsg("etcd_lock worker started")));

	publish_endpoint();
	revoke_previous_leases();

	/*
	 * With etcd auth on, authenticate once for the instance: backends take
	 * the shared token instead of each authenticating. The worker's
	 * authentication is a request in flight like the others: its loop
	 * goes on meanwhile (deadlines, renewals that need no token).
	 */
	etcd_gateway_async_auth();
	etcd_gateway_watch_postmaster();
	w_cred_stamp = etcd_gateway_credentials_stamp();
	if (etcd_lock_username && etcd_lock_username[0] && endpoints_usable())
	{
		EtcdStatus	st;

		if (!w_catch(authenticate_fn, NULL, &st))
			note_result(&st, false);
	}

	for (;;)
	{
		EtcdAsyncResult res[MAX_INFLIGHT];
		EtcdMono	now = etcd_mono_now(),
					next = now + MONO_MS(1000);
		int			n;

		MemoryContextSwitchTo(cxt);
		record_leases();
		ka_stream_collect(&next);
		check_deadlines(now, &next);
		if (endpoints_usable())
		{
			start_releases(now, &next);
			start_keepalives(now, &next);
			refill_pool(now, &next);
			/* the grants just sent are in the lease file while in flight */
			record_leases();
		}
		if (w_shutdown && worker_may_exit(now))
			break;
		if (w_shutdown)
			next = Min(next, now + MONO_MS(100));

		n = etcd_async_wait((long) Max(0, (next - now + 999) / 1000), res, MAX_INFLIGHT);
		for (i = 0; i < n; i++)
		{
			WorkerReq  *req;

			if (res[i].tag == ETCD_ASYNC_AUTH_TAG)
			{
				finish_authentication(&res[i]);
				continue;
			}
			req = &w_reqs[res[i].tag];

			if (req->kind == WR_KEEPALIVE)
				finish_keepalive(req, &res[i]);
			else if (req->kind == WR_RELEASE)
				finish_release(req, &res[i]);
			else if (req->kind == WR_GRANT)
				finish_grant(req, &res[i]);
			else if (req->kind == WR_RESOLVE)
				finish_resolve(req, &res[i]);
			req->kind = WR_FREE;
		}

		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(cxt);

		/*
		 * The postmaster died: its backends exit at their next wait, each
		 * handing its lease to us for revocation. Send those (and revoke
		 * the pool's), then exit, as at a shutdown; a backend still running
		 * keeps its lease, renewed until we exit, then left to expire.
		 */
		if (etcd_gateway_postmaster_died() && !w_shutdown)
		{
			ereport(LOG,
					(errmsg("etcd_lock worker: the postmaster died; revoking the leases of the backends as they exit")));
			w_shutdown = true;
		}

		if ((w_cred_retry || etcd_gateway_recheck_pending()) && !w_shutdown && endpoints_usable())
		{
			w_cred_retry = false;
			start_credentials_check();
		}

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			char	   *before = pstrdup(etcd_lock_endpoints ? etcd_lock_endpoints : "");

			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (strcmp(before, etcd_lock_endpoints ? etcd_lock_endpoints : "") != 0)
				ka_stream_reopen();
			pfree(before);
			/* changed credentials are tried at once, not at token expiry */
			if (etcd_gateway_credentials_stamp() != w_cred_stamp)
			{
				w_cred_stamp = etcd_gateway_credentials_stamp();	/* the file once more: as good */
				if (w_cred_stamp == 0)
					set_shared_error(etcd_shared->auth_error, "");
				else
					start_credentials_check();
			}
		}
	}
	/*
	 * Exit code 0 when the server stops (nothing to restart; PostgreSQL
	 * then logs nothing), 1 otherwise: the postmaster starts the worker
	 * again (after a pg_terminate_backend, say); after the postmaster's
	 * death nobody reads it.
	 */
	ereport(LOG, (errmsg("etcd_lock worker stopped")));
	proc_exit(w_server_stopping ? 0 : 1);
}
