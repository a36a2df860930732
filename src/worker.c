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
 * their own timer (session.c). The worker uses the same gateway and
 * request builders as the backends (lockops.c).
 *
 * This file: the loop, signals, its requests in flight (WorkerState wk,
 * one struct), reachability and authentication. Leases and keepalives are
 * renewals.c's, the release queue's requests releases.c's.
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
#include "worker_int.h"

WorkerState wk = {.reachable = true, .batch_max = RELEASE_BATCH, .leases_n = -1};

volatile sig_atomic_t w_shutdown = false;	/* set by the signal handler */

static void set_shared_error(char *dst, const char *msg);

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
bool
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
bool
w_async_start(const char *path, const char *body, EtcdParseFn parse,
			  void *parg, int timeout_ms, int tag, EtcdStatus *st)
{
	AsyncArgs	a = {path, body, parse, parg, timeout_ms, tag};

	return w_catch(async_start_fn, &a, st);
}

bool
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
bool
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

int
free_req(void)
{
	int			i;

	for (i = 0; i < MAX_INFLIGHT; i++)
		if (wk.reqs[i].kind == WR_FREE)
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
	if (strcmp(wk.endpoint, etcd_current_endpoint()) == 0)
		return;
	strlcpy(wk.endpoint, etcd_current_endpoint(), sizeof(wk.endpoint));
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	strlcpy(etcd_shared->endpoint, wk.endpoint, sizeof(etcd_shared->endpoint));
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

	wk.ka_stream_retry_at = 0;
	wk.pool_retry_at = 0;
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

void
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
		if (!wk.reachable)
		{
			ereport(LOG,
					(errmsg("etcd_lock worker: etcd is reachable again after %.1f s (%lld requests failed meanwhile)",
							(double) (now - wk.down_since) / 1000000.0, (long long) wk.failed)));
			wk.reachable = true;
			wk.failed = 0;
			LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
			etcd_shared->etcd_reachable = true;
			etcd_shared->reachable_since = GetCurrentTimestamp();
			LWLockRelease(etcd_shared->lock);
			/* what waited out the outage goes now, not at its retry time */
			retry_now(now);
		}
		if (!ok)
			set_shared_error(etcd_shared->last_error, st->message);
		if (!ok && now >= wk.next_error_log)
		{
			ereport(LOG,
					(errmsg("etcd_lock worker: etcd answered an error"),
					 errdetail("%s", st->message)));
			wk.next_error_log = now + MONO_MS(10000);
		}
		return;
	}
	wk.failed++;
	set_shared_error(etcd_shared->last_error, st->message);
	if (wk.reachable)
	{
		ereport(LOG,
				(errmsg("etcd_lock worker: etcd is unreachable; renewals and releases are retried"),
				 errdetail("%s", st->message),
				 st->log_message[0] ? errdetail_log("%s", st->log_message) : 0));
		wk.reachable = false;
		wk.down_since = now;
		wk.next_summary = now + MONO_MS(SUMMARY_MS);
		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		etcd_shared->etcd_reachable = false;
		etcd_shared->reachable_since = GetCurrentTimestamp();
		LWLockRelease(etcd_shared->lock);
	}
	else if (now >= wk.next_summary)
	{
		ereport(LOG,
				(errmsg("etcd_lock worker: etcd still unreachable after %.0f s: %lld requests failed, %d releases queued",
						(double) (now - wk.down_since) / 1000000.0, (long long) wk.failed,
						etcd_shared->npending),
				 errdetail("%s", st->message)));
		wk.next_summary = now + MONO_MS(SUMMARY_MS);
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
		wk.cred_check = true;
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
	bool		check = wk.cred_check;

	wk.cred_check = false;
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
		wk.cred_retry = true;	/* not answered: check again next turn */
	note_result(&r->st, false);
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
 * worker_may_exit: at shutdown, once no backend keeps a lease and nothing
 * is queued or in flight, or after a bound (twice the request timeout, at
 * least 5 s) if etcd cannot be reached.
 */
static bool
worker_may_exit(EtcdMono now)
{
	int			i;
	bool		busy = etcd_async_inflight() > 0;

	if (wk.shutdown_at == 0)
	{
		wk.shutdown_at = now;
		/* the pool's leases: nobody will adopt them now */
		for (i = 0; i < ETCD_LEASE_POOL; i++)
			if (wk.pool_pending[i] != 0 && !wk.pool_granting[i])
				(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, wk.pool_pending[i], NULL, 0, 0, false, true, 0);
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
				(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, id, NULL, 0, 0, false, true, 0);
		}
	}
	if (now >= wk.shutdown_at + MONO_MS(Max(5000, 2L * etcd_lock_request_timeout)))
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

	wk.ka_inflight = MemoryContextAllocZero(TopMemoryContext,
										   sizeof(bool) * etcd_shared->nslots);
	wk.ka_fifo = MemoryContextAllocZero(TopMemoryContext,
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
	wk.cred_stamp = etcd_gateway_credentials_stamp();
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
			req = &wk.reqs[res[i].tag];

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

		if ((wk.cred_retry || etcd_gateway_recheck_pending()) && !w_shutdown && endpoints_usable())
		{
			wk.cred_retry = false;
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
			if (etcd_gateway_credentials_stamp() != wk.cred_stamp)
			{
				wk.cred_stamp = etcd_gateway_credentials_stamp();	/* the file once more: as good */
				if (wk.cred_stamp == 0)
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
