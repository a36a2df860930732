/*
 * releases.c
 *		The worker's releases: the queue's entries sent in batches of
 *		compare-and-delete txns, retried until etcd confirms; a key of
 *		unknown revision read first and deleted by its revision, and read
 *		again once a late acquire must have landed (finish_resolve).
 *
 * May call the lock algorithm's request builders (lockops), the gateway,
 * shared memory and the worker's requests (worker_int.h).
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

static void finish_release_entry(int index, EtcdAsyncResult *res);

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
	for (i = req->batch[0] + 1; i < etcd_shared->nrelused && req->nbatch < wk.batch_max; i++)
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
void
start_releases(EtcdMono now, EtcdMono *next)
{
	while (wk.nreleases_inflight < MAX_RELEASES_INFLIGHT)
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

		wk.reqs[r].kind = WR_RELEASE;
		wk.reqs[r].nbatch = 1;
		wk.reqs[r].batch[0] = idx;
		if (rel.kind == REL_DELETE && rel.token != 0 && !rel.alone)
			collect_batch(&wk.reqs[r], now);
		if (wk.reqs[r].nbatch > 1)
		{
			/*
			 * Several releases due at once (a ROLLBACK of many xact locks, a
			 * backend's exit): one txn, each key compared and deleted in a
			 * nested txn of its own.
			 */
			char	  **keys = palloc(sizeof(char *) * wk.reqs[r].nbatch);
			int		   *lens = palloc(sizeof(int) * wk.reqs[r].nbatch);
			int64	   *toks = palloc(sizeof(int64) * wk.reqs[r].nbatch);

			LWLockAcquire(etcd_shared->lock, LW_SHARED);
			for (i = 0; i < wk.reqs[r].nbatch; i++)
			{
				EtcdRelease *e = &etcd_shared->releases[wk.reqs[r].batch[i]];

				keys[i] = pnstrdup(e->key, e->keylen);
				lens[i] = e->keylen;
				toks[i] = e->token;
			}
			LWLockRelease(etcd_shared->lock);
			path = "/v3/kv/txn";
			body = etcd_release_batch_body(keys, lens, toks, wk.reqs[r].nbatch);
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
			wk.reqs[r].kind = WR_RESOLVE;
			wk.reqs[r].granted = 0;
		}
		else
			path = etcd_release_request(rel.key, rel.keylen, rel.token, &body);
		wk.reqs[r].index = idx;
		wk.reqs[r].lease_id = rel.lease_id;
		wk.reqs[r].sent = now;
		if (!w_async_start(path, body,
						   wk.reqs[r].kind == WR_RESOLVE ? etcd_parse_create_rev : NULL,
						   wk.reqs[r].kind == WR_RESOLVE ? &wk.reqs[r].granted : NULL,
						   etcd_lock_request_timeout, r, &st))
		{
			wk.reqs[r].kind = WR_FREE;
			note_result(&st, false);
			LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
			for (i = 0; i < wk.reqs[r].nbatch; i++)
			{
				etcd_shared->releases[wk.reqs[r].batch[i]].state = REL_PENDING;
				etcd_shared->releases[wk.reqs[r].batch[i]].retry_at = now + MONO_MS(RETRY_MS);
			}
			LWLockRelease(etcd_shared->lock);
			ConditionVariableBroadcast(&etcd_shared->release_cv);
			return;
		}
		wk.nreleases_inflight++;
	}
}

/*
 * finish_release frees the queue entry once etcd confirmed the release, or
 * schedules a retry. A release is given up only when it no longer matters:
 * its lease is not renewed by anyone and has outlived its TTL since queued.
 */


void
finish_release(WorkerReq *req, EtcdAsyncResult *res)
{
	int			i;

	wk.nreleases_inflight--;
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
		if (too_big && req->nbatch <= wk.batch_max)
			wk.batch_max = Max(1, req->nbatch / 2);
		ereport(LOG,
				(errmsg("etcd_lock worker: etcd refused a batch of %d releases (%s); %s",
						req->nbatch, res->st.message,
						too_big ? psprintf("sending at most %d per request", wk.batch_max) :
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
				give_up = false,
				settle;
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
	/*
	 * A late attempt can land until late_until. When this delete (or the
	 * backend's before it) first went out is not known here, so any entry
	 * that carries late_until is read once more, at late_until or at once
	 * (only this process writes an entry it is sending).
	 */
	settle = ok && !revoke && e->late_until != 0 &&
		!(e->settle_at >= e->late_until && now >= e->settle_at) &&	/* read after it */
		lease_in_use(e->lease_id);
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	e->tried = true;
	if (settle)
	{
		/*
		 * Deleted, but an attempt of the key's acquire may still be
		 * applied and put it again under a lease that lives on (a request
		 * the gateway resent, or one cut short): read it again once that
		 * attempt must have landed, as a queue place found gone is
		 * (finish_resolve), and delete what is there then.
		 */
		e->token = 0;
		e->held = false;
		e->settle_at = Max(e->late_until, now);
		e->state = REL_PENDING;
		e->retry_at = e->settle_at;
	}
	else if (ok || give_up)
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
 * finish_resolve: the key to release is gone (done), or its revision is
 * now known (the compare-and-delete goes next).
 */
void
finish_resolve(WorkerReq *req, EtcdAsyncResult *res)
{
	EtcdRelease *e = &etcd_shared->releases[req->index];
	bool		live,
				in_use;

	wk.nreleases_inflight--;
	note_result(&res->st, res->ok);
	in_use = lease_in_use(e->lease_id);
	live = res->ok && req->granted == 0 && in_use;
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	if (!res->ok && !in_use && e->settle_at != 0)
	{
		/*
		 * A read for a late attempt, and nobody renews the lease any more:
		 * a late put under it fails, and what it put goes with it.
		 */
		e->tried = true;
		e->state = REL_FREE;
		etcd_shared->npending--;
	}
	else if (live &&
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
			e->settle_at = Max(e->queued_at + MONO_MS(RESOLVE_SETTLE_MS), e->late_until);
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
