/*
 * renewals.c
 *		The worker's leases: loss detection at each deadline
 *		(check_deadlines), keepalives on the stream or as requests, each
 *		lease's new deadline from the send time of the renewal answered
 *		(apply_renewal), the lease pool backends take theirs from, and the
 *		leases file a restarted worker revokes.
 *
 * May call the gateway, shared memory and the worker's requests
 * (worker_int.h).
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
void
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
void
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

		if (slot->state == LEASE_LIVE && !wk.ka_inflight[i])
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
		if (!etcd_ka_stream_usable() && wk.ka_count == 0 && now >= wk.ka_stream_retry_at)
		{
			if (!w_catch(stream_open_fn, NULL, &st))
			{
				note_result(&st, false);
				wk.ka_stream_retry_at = now + MONO_MS(KA_STREAM_RETRY_MS);
			}
		}
		if (etcd_ka_stream_usable() && etcd_ka_stream_send(lease))
		{
			KaSent	   *k = &wk.ka_fifo[(wk.ka_head + wk.ka_count) % etcd_shared->nslots];

			k->slot = i;
			k->lease_id = lease;
			k->sent = now;
			k->answer_by = now + MONO_MS(left_ms);
			wk.ka_count++;
			wk.ka_inflight[i] = true;
			continue;
		}

		/* one-shot, while the stream cannot be had */
		r = free_req();
		if (r < 0)
			return;				/* due, but no room: a completion wakes us */
		wk.reqs[r].kind = WR_KEEPALIVE;
		wk.reqs[r].index = i;
		wk.reqs[r].lease_id = lease;
		wk.reqs[r].sent = now;
		wk.reqs[r].ttl = 0;
		/* a renewal only extends a lease: safe to resend */
		if (!w_async_start("/v3/lease/keepalive", etcd_lease_body(lease),
							  etcd_parse_keepalive, &wk.reqs[r].ttl, (int) left_ms,
							  r, &st))
		{
			wk.reqs[r].kind = WR_FREE;
			note_result(&st, false);
			LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
			if (slot->state == LEASE_LIVE && slot->lease_id == lease)
				slot->next_keepalive = Min(deadline, now + MONO_MS(RETRY_MS));
			LWLockRelease(etcd_shared->lock);
			continue;
		}
		wk.ka_inflight[i] = true;
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

	wk.ka_inflight[index] = false;
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

void
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
	while (wk.ka_count > 0)
	{
		KaSent	   *k = &wk.ka_fifo[wk.ka_head];

		wk.ka_head = (wk.ka_head + 1) % etcd_shared->nslots;
		wk.ka_count--;
		apply_renewal(k->slot, k->lease_id, k->sent, false, 0, &st);
	}
	wk.ka_stream_retry_at = etcd_mono_now() + MONO_MS(KA_STREAM_RETRY_MS);
}

/*
 * ka_stream_reopen closes the keepalive stream after a reload changed
 * etcd_lock.endpoints, so renewals go to the new list as the backends'
 * requests do (the next renewal opens a new stream). Renewals sent on it
 * and not yet answered are retried at once; this is no failure of etcd.
 */
void
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
	while (wk.ka_count > 0)
	{
		KaSent	   *k = &wk.ka_fifo[wk.ka_head];

		wk.ka_head = (wk.ka_head + 1) % etcd_shared->nslots;
		wk.ka_count--;
		apply_renewal(k->slot, k->lease_id, k->sent, false, 0, &st);
	}
	wk.ka_stream_retry_at = 0;
}

/*
 * ka_stream_collect pairs the stream's answers with the renewals sent, in
 * order, and checks that the oldest unanswered one is not overdue.
 */
void
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

			if (wk.ka_count == 0 || wk.ka_fifo[wk.ka_head].lease_id != res[i].lease_id)
			{
				ka_stream_fail("answered out of order");
				return;
			}
			k = wk.ka_fifo[wk.ka_head];
			wk.ka_head = (wk.ka_head + 1) % etcd_shared->nslots;
			wk.ka_count--;
			note_result(NULL, true);
			apply_renewal(k.slot, k.lease_id, k.sent, true, res[i].ttl, NULL);
		}
	}
	if (wk.ka_count == 0 && etcd_ka_stream_active() && !etcd_ka_stream_usable())
		etcd_ka_stream_close(false);	/* ended while idle: reopen when needed */
	if (wk.ka_count > 0)
	{
		EtcdMono	now = etcd_mono_now();

		if (!etcd_ka_stream_usable())
			ka_stream_fail("ended");
		else if (now >= wk.ka_fifo[wk.ka_head].answer_by)
			ka_stream_fail("timed out");
		else if (wk.ka_fifo[wk.ka_head].answer_by < *next)
			*next = wk.ka_fifo[wk.ka_head].answer_by;
	}
}

/*
 * refill_pool keeps ETCD_LEASE_POOL leases granted ahead, so a backend's
 * first lock needs no grant (etcd_adopt_pooled_lease). Pool leases are
 * renewed like any other (their slots come after the backends'); one that
 * was lost or has another TTL than the setting's is revoked and replaced.
 * Each grant uses an ID chosen here: safe to resend, no orphan lease.
 */
void
refill_pool(EtcdMono now, EtcdMono *next)
{
	int			i,
				ttl = etcd_lock_lease_ttl;

	if (w_shutdown)
		return;
	if (now < wk.pool_retry_at)
	{
		if (wk.pool_retry_at < *next)
			*next = wk.pool_retry_at;
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

		if (wk.pool_granting[i - etcd_shared->nbackends] || wk.ka_inflight[i])
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
			(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, stale, NULL, 0, 0, false, true, 0);
		if (!empty)
			continue;
		r = free_req();
		if (r < 0)
			return;
		wk.reqs[r].kind = WR_GRANT;
		wk.reqs[r].index = i;
		{
			int			pi = i - etcd_shared->nbackends;

			/* an unconfirmed grant is resent as it was: no orphan lease */
			if (wk.pool_pending[pi] != 0)
			{
				wk.reqs[r].lease_id = wk.pool_pending[pi];
				gttl = wk.pool_pending_ttl[pi];
				body = psprintf("{\"ID\":\"" INT64_FORMAT "\",\"TTL\":\"%d\"}",
								wk.pool_pending[pi], gttl);
			}
			else
			{
				gttl = ttl;
				wk.reqs[r].lease_id = etcd_new_lease_id(gttl, &body);
				wk.pool_pending[pi] = wk.reqs[r].lease_id;
				wk.pool_pending_ttl[pi] = gttl;
				wk.pool_pending_sent[pi] = now;
			}
			/*
			 * The lease's deadline counts from the first send of its ID:
			 * a resend answered "exists" (or a first grant applied late)
			 * says nothing of when etcd started the TTL, only that it was
			 * no earlier than that.
			 */
			wk.reqs[r].sent = wk.pool_pending_sent[pi];
		}
		wk.reqs[r].ttl = gttl;
		wk.reqs[r].granted = 0;
		if (!w_async_start("/v3/lease/grant", body, etcd_parse_lease_grant,
							  &wk.reqs[r].granted, etcd_lock_request_timeout, r, &st))
		{
			wk.reqs[r].kind = WR_FREE;
			note_result(&st, false);
			wk.pool_retry_at = now + MONO_MS(KA_STREAM_RETRY_MS);
			return;
		}
		wk.pool_granting[i - etcd_shared->nbackends] = true;
	}
}

/*
 * finish_grant puts a lease granted ahead into its pool slot (or revokes it
 * if it is no longer wanted).
 */
void
finish_grant(WorkerReq *req, EtcdAsyncResult *res)
{
	EtcdLeaseSlot *p = &etcd_shared->slots[req->index];
	bool		ours = (res->ok && req->granted == req->lease_id) ||
		(!res->ok && res->st.kind == ETCD_ERROR_REPLY &&
		 res->st.grpc_code == GRPC_FAILED_PRECONDITION);	/* our resent grant */
	bool		placed = false;

	wk.pool_granting[req->index - etcd_shared->nbackends] = false;
	note_result(&res->st, res->ok || res->st.kind == ETCD_ERROR_REPLY);
	if (ours || res->st.kind == ETCD_ERROR_REPLY)
		wk.pool_pending[req->index - etcd_shared->nbackends] = 0;	/* settled */
	if (!ours)
	{
		/*
		 * etcd refused this attempt (429, permission...), which settles
		 * it, but an earlier attempt of the same ID (a lost answer) may
		 * have been applied: revoke the ID rather than forget it ("not
		 * found" counts as done).
		 */
		if (res->st.kind == ETCD_ERROR_REPLY)
			(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, req->lease_id, NULL, 0, 0, false, true, 0);
		wk.pool_retry_at = etcd_mono_now() + MONO_MS(KA_STREAM_RETRY_MS);
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
		(void) etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, req->lease_id, NULL, 0, 0, false, true, 0);
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
void
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
		if (wk.pool_pending[i] != 0)
		{
			ids[n++] = wk.pool_pending[i];
			sig ^= (uint64) wk.pool_pending[i] * UINT64CONST(0x9E3779B97F4A7C15);
		}
	if (n == wk.leases_n && sig == wk.leases_sig)
		return;
	initStringInfo(&b);
	appendStringInfo(&b, "%s\n", leases_file_header());
	for (i = 0; i < n; i++)
		appendStringInfo(&b, INT64_FORMAT "\n", ids[i]);
	/* whatever happens below, do not retry (and log) at every turn */
	wk.leases_n = n;
	wk.leases_sig = sig;
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
	wk.leases_n = n;
	wk.leases_sig = sig;
}

/*
 * revoke_previous_leases queues the revoke of every lease the previous run
 * of this server recorded (once per shared memory: at server start and
 * after a crash restart, not when only the worker restarts). Its backends
 * are gone; their locks are freed now rather than after a TTL.
 */
void
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
				etcd_queue_release(REL_REVOKE, ETCD_KEY_NONE, (int64) id, NULL, 0, 0, false, true, 0))
				n++;
		}
	}
	FreeFile(f);
	if (n > 0)
		ereport(LOG,
				(errmsg("etcd_lock worker: revoking %d lease(s) of this server's previous run", n)));
}
