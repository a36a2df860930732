/*
 * worker.c
 *		The etcd_lock background worker.
 *
 * Started by the postmaster (no database connection, so it runs on
 * primaries and hot standbys alike) and restarted one second after it
 * dies. It
 *	- performs the releases backends queued (transaction end, exit), first,
 *	  because a waiter somewhere is waiting for them;
 *	- renews every live lease once per TTL/3, marking a lease LOST when
 *	  etcd answers that it no longer exists.
 * It uses the same gateway and lock-release code as the backends.
 */
#include "postgres.h"

#include <signal.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
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

#define RETRY_MS	500			/* after a failed request */

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

/*
 * run_request runs one etcd call, turning a thrown ERROR (not an
 * interrupt's FATAL) into a logged failure so the worker carries on.
 */
static bool
run_release(EtcdRelease *r, EtcdStatus *st)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = false;

	PG_TRY();
	{
		if (r->kind == REL_REVOKE)
			ok = etcd_lease_revoke(r->lease_id, st);
		else if (r->token == 0)
		{
			/* a queue place of unknown revision: delete it whatever it is */
			StringInfoData b;

			initStringInfo(&b);
			appendStringInfoString(&b, "{\"key\":\"");
			etcd_append_b64(&b, r->key, r->keylen);
			appendStringInfoString(&b, "\"}");
			ok = etcd_request("/v3/kv/deleterange", b.data, NULL, NULL, st);
		}
		else
			ok = etcd_lock_release(r->key, r->keylen, r->token, st);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		st->kind = ETCD_BAD_REPLY;
		snprintf(st->message, sizeof(st->message), "%s", edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * process_releases sends every due queued release. Returns the time of the
 * earliest retry still outstanding (0 if none).
 */
static TimestampTz
process_releases(void)
{
	TimestampTz next_retry = 0;

	for (;;)
	{
		EtcdRelease r;
		EtcdStatus	st;
		int			i,
					idx = -1;
		TimestampTz now = GetCurrentTimestamp();
		bool		ok,
					give_up = false;

		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		if (etcd_shared->npending > 0)
		{
			for (i = 0; i < etcd_shared->nrelused; i++)
			{
				EtcdRelease *e = &etcd_shared->releases[i];

				if (e->state != REL_PENDING)
					continue;
				if (e->retry_at > now)
				{
					if (next_retry == 0 || e->retry_at < next_retry)
						next_retry = e->retry_at;
					continue;
				}
				e->state = REL_BUSY;
				e->attempted = true;	/* from now on it may reach etcd */
				memcpy(&r, e, sizeof(r));
				idx = i;
				break;
			}
		}
		LWLockRelease(etcd_shared->lock);
		if (idx < 0)
			return next_retry;

		ok = run_release(&r, &st);
		if (!ok)
		{
			/* keys of a lease nobody renews vanish by themselves */
			give_up = r.kind == REL_REVOKE ?
				now > TimestampTzPlusMilliseconds(r.queued_at, etcd_lock_lease_ttl * 1000L) :
				(!lease_in_use(r.lease_id) &&
				 now > TimestampTzPlusMilliseconds(r.queued_at, etcd_lock_lease_ttl * 1000L));
			ereport(give_up ? WARNING : LOG,
					(errmsg("etcd_lock worker: could not %s%s",
							r.kind == REL_REVOKE ? "revoke a lease" : "release a lock",
							give_up ? ", giving up (its lease expires)" : ", will retry"),
					 errdetail("%s", st.message)));
		}
		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		if (ok || give_up)
		{
			etcd_shared->releases[idx].state = REL_FREE;
			etcd_shared->npending--;
		}
		else
		{
			etcd_shared->releases[idx].state = REL_PENDING;
			etcd_shared->releases[idx].retry_at =
				TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RETRY_MS);
		}
		LWLockRelease(etcd_shared->lock);
		ConditionVariableBroadcast(&etcd_shared->release_cv);
	}
}

/*
 * run_keepalive renews one lease, turning a thrown ERROR into a failure.
 */
static bool
run_keepalive(int64 lease, int *newttl, EtcdStatus *st, int timeout_ms)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = false;

	PG_TRY();
	{
		ok = etcd_lease_keepalive(lease, newttl, st, timeout_ms);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		snprintf(st->message, sizeof(st->message), "%s", edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * mark_lost marks a slot's lease LOST (caller holds the lock exclusively)
 * and, if it holds locks, tells its backend as it asked: SIGINT cancels its running statement,
 * SIGTERM ends the session; "warn" waits for its next statement. The
 * backend's emit_log_hook turns the cancel/terminate message into one that
 * names the lost locks.
 */
static void
mark_lost(EtcdLeaseSlot *slot, bool expired)
{
	slot->state = LEASE_LOST;
	slot->loss_expired = expired;
	if (slot->pid > 0 && slot->nheld > 0)
	{
		if (slot->on_loss == ON_LOSS_CANCEL)
			kill(slot->pid, SIGINT);
		else if (slot->on_loss == ON_LOSS_TERMINATE)
			kill(slot->pid, SIGTERM);
	}
}

/*
 * process_keepalives renews every live lease that is due, sending queued
 * releases in between so they never wait behind a long sweep. A lease whose
 * local deadline passes without a successful renewal, or that etcd reports
 * gone, is marked lost. Each renewal is bounded by the time left before the
 * deadline. Returns the next time something is due.
 */
static TimestampTz
process_keepalives(void)
{
	TimestampTz next_due = 0;
	int			i;

	for (i = 0; i < etcd_shared->nslots; i++)
	{
		EtcdLeaseSlot *slot = &etcd_shared->slots[i];
		int64		lease;
		int			newttl = 0;
		TimestampTz due,
					sent,
					deadline;
		EtcdStatus	st;
		bool		ok,
					lost = false;
		long		left_ms;

		sent = GetCurrentTimestamp();
		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		lease = slot->state == LEASE_LIVE ? slot->lease_id : 0;
		due = slot->next_keepalive;
		deadline = LEASE_DEADLINE(slot);
		if (lease != 0 && sent >= deadline)
		{
			mark_lost(slot, true);
			lost = true;
		}
		LWLockRelease(etcd_shared->lock);
		if (lost)
		{
			ereport(LOG,
					(errmsg("etcd_lock worker: lease %llx of backend pid %d lapsed: no successful renewal before its deadline",
							(unsigned long long) lease, (int) slot->pid)));
			continue;
		}
		if (lease == 0)
			continue;
		if (due > sent)
		{
			if (next_due == 0 || due < next_due)
				next_due = due;
			continue;
		}

		left_ms = (long) ((deadline - sent) / 1000);
		ok = run_keepalive(lease, &newttl, &st,
						   (int) Max(1, Min(left_ms, etcd_lock_request_timeout)));

		LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
		if (slot->state == LEASE_LIVE && slot->lease_id == lease)
		{
			if (ok && newttl > 0)
			{
				slot->last_ok = sent;
				slot->next_keepalive = TimestampTzPlusMilliseconds(sent, slot->ttl * 1000L / 3);
			}
			else if (ok || GetCurrentTimestamp() >= deadline)
			{
				mark_lost(slot, !ok);
				lost = true;
			}
			else
				slot->next_keepalive = Min(deadline,
										   TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RETRY_MS));
			if (slot->state == LEASE_LIVE)
			{
				TimestampTz next = Min(slot->next_keepalive, LEASE_DEADLINE(slot));

				if (next_due == 0 || next < next_due)
					next_due = next;
			}
		}
		LWLockRelease(etcd_shared->lock);
		if (lost)
			ereport(LOG,
					(errmsg("etcd_lock worker: lease %llx of backend pid %d is lost: %s",
							(unsigned long long) lease, (int) slot->pid,
							ok ? "etcd says it no longer exists" :
							"no successful renewal before its deadline")));
		else if (!ok)
			ereport(LOG,
					(errmsg("etcd_lock worker: could not renew lease %llx, will retry",
							(unsigned long long) lease),
					 errdetail("%s", st.message)));

		if (etcd_shared->npending > 0)
			process_releases();
	}
	return next_due;
}

void
etcd_lock_worker_main(Datum arg)
{
	MemoryContext cxt;
	int			i;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
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

	cxt = AllocSetContextCreate(TopMemoryContext, "etcd_lock worker",
								ALLOCSET_DEFAULT_SIZES);
	ereport(LOG, (errmsg("etcd_lock worker started")));

	for (;;)
	{
		TimestampTz next_rel,
					next_ka,
					next,
					now;
		long		timeout;

		MemoryContextSwitchTo(cxt);
		next_rel = process_releases();
		next_ka = process_keepalives();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(cxt);

		now = GetCurrentTimestamp();
		next = TimestampTzPlusMilliseconds(now, 1000);
		if (next_rel != 0 && next_rel < next)
			next = next_rel;
		if (next_ka != 0 && next_ka < next)
			next = next_ka;
		timeout = Max(0, (long) ((next - now + 999) / 1000));

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}
