/*
 * shmem.c
 *		Shared memory: the lease registry and the release queue.
 *
 * A backend registers its lease in its own slot; the worker renews every
 * LIVE lease and marks a lease LOST when etcd says it is gone. Releases
 * that must not block a backend (at transaction end, at exit) are queued
 * here and performed by the worker. The queue has no order: two entries
 * for one key never coexist, because a backend takes back or waits for a
 * queued release of a key before it acquires that key again
 * (etcd_reclaim_release).
 */
#include "postgres.h"

#include <signal.h>
#include <time.h>

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "common/hashfn.h"

#include "compat.h"
#include "gateway.h"
#include "group.h"
#include "lockops.h"
#include "shmem.h"

EtcdShared *etcd_shared = NULL;

/* the release this process queued last (etcd_queue_release) */
EtcdReleaseRef etcd_last_queued = {-1, 0};

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static bool queue_release(EtcdReleaseKind kind, int keykind, int64 lease_id,
						  const char *key, int keylen, int64 token, bool held,
						  bool attempted, EtcdMono late_until, bool settle);

/*
 * etcd_mono_now returns the shared monotonic clock (see EtcdMono). Async
 * signal safe: the backend's lease-deadline timer calls it.
 */
EtcdMono
etcd_mono_now(void)
{
	struct timespec ts;

#ifdef CLOCK_BOOTTIME
	if (clock_gettime(CLOCK_BOOTTIME, &ts) != 0)
#endif
		clock_gettime(CLOCK_MONOTONIC, &ts);
	return (EtcdMono) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int
etcd_nreleases(void)
{
	return Max(256, MaxBackends * 4);
}

static int
etcd_ninfos(void)
{
	return etcd_lock_max_locks > 0 ? etcd_lock_max_locks : Max(1024, MaxBackends * 8);
}

static Size
etcd_shmem_size(void)
{
	Size		sz = MAXALIGN(sizeof(EtcdShared));

	sz = add_size(sz, MAXALIGN(mul_size(MaxBackends + ETCD_LEASE_POOL, sizeof(EtcdLeaseSlot))));
	sz = add_size(sz, MAXALIGN(mul_size(etcd_nreleases(), sizeof(EtcdRelease))));
	sz = add_size(sz, MAXALIGN(mul_size(etcd_ninfos(), sizeof(EtcdLockInfo))));
	/* the group commit's queue and slots (group.c), last */
	sz = add_size(sz, etcd_group_shmem_size());
	return sz;
}

static void
etcd_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(etcd_shmem_size());
	RequestNamedLWLockTranche("etcd_lock", 1);
}

static void
etcd_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	etcd_shared = ShmemInitStruct("etcd_lock", etcd_shmem_size(), &found);
	if (!found)
	{
		char	   *p = (char *) etcd_shared;

		memset(etcd_shared, 0, etcd_shmem_size());
		etcd_shared->lock = &(GetNamedLWLockTranche("etcd_lock"))->lock;
		etcd_shared->etcd_reachable = true;
		etcd_shared->reachable_since = GetCurrentTimestamp();
		pg_atomic_init_u64(&etcd_shared->counters.requests, 0);
		pg_atomic_init_u64(&etcd_shared->counters.failures, 0);
		pg_atomic_init_u64(&etcd_shared->counters.failovers, 0);
		pg_atomic_init_u64(&etcd_shared->counters.authentications, 0);
		pg_atomic_init_u64(&etcd_shared->counters.leases_lost, 0);
		pg_atomic_init_u32(&etcd_shared->counters.owed, 0);
		pg_atomic_init_u32(&etcd_shared->counters.unshown, 0);
		for (int k = 0; k < ETCD_CALL_NKINDS; k++)
			pg_atomic_init_u64(&etcd_shared->counters.calls[k], 0);
		etcd_shared->stats_base.reset_at = GetCurrentTimestamp();
		ConditionVariableInit(&etcd_shared->release_cv);
		etcd_shared->nslots = MaxBackends + ETCD_LEASE_POOL;
		etcd_shared->nbackends = MaxBackends;
		etcd_shared->nreleases = etcd_nreleases();
		p += MAXALIGN(sizeof(EtcdShared));
		etcd_shared->slots = (EtcdLeaseSlot *) p;
		for (int i = 0; i < MaxBackends + ETCD_LEASE_POOL; i++)
			pg_atomic_init_u32(&etcd_shared->slots[i].loss_signalled, 0);
		p += MAXALIGN(mul_size(MaxBackends + ETCD_LEASE_POOL, sizeof(EtcdLeaseSlot)));
		etcd_shared->releases = (EtcdRelease *) p;
		p += MAXALIGN(mul_size(etcd_nreleases(), sizeof(EtcdRelease)));
		etcd_shared->ninfos = etcd_ninfos();
		etcd_shared->infos = (EtcdLockInfo *) p;
	}
	etcd_group_shmem_init((char *) etcd_shared + etcd_shmem_size() - etcd_group_shmem_size(),
						  found);
	LWLockRelease(AddinShmemInitLock);
}

/* etcd_count_call counts one lock call's outcome (etcd_lock_stats) */
void
etcd_count_call(EtcdCallCount what)
{
	if (etcd_shared != NULL && what >= 0 && what < ETCD_CALL_NKINDS)
		pg_atomic_fetch_add_u64(&etcd_shared->counters.calls[what], 1);
}

/*
 * etcd_stats_reset: etcd_lock_stats counts from now (the call counters go
 * to zero; the request counters etcd_lock_status shows keep counting, the
 * statistics show them less what they were now).
 */
void
etcd_stats_reset(void)
{
	EtcdCounters *c = &etcd_shared->counters;

	for (int k = 0; k < ETCD_CALL_NKINDS; k++)
		pg_atomic_write_u64(&c->calls[k], 0);
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	etcd_shared->stats_base.reset_at = GetCurrentTimestamp();
	etcd_shared->stats_base.requests = pg_atomic_read_u64(&c->requests);
	etcd_shared->stats_base.failures = pg_atomic_read_u64(&c->failures);
	etcd_shared->stats_base.failovers = pg_atomic_read_u64(&c->failovers);
	etcd_shared->stats_base.leases_lost = pg_atomic_read_u64(&c->leases_lost);
	LWLockRelease(etcd_shared->lock);
}

void
etcd_shmem_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = etcd_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = etcd_shmem_startup;
}

/*
 * etcd_shared_token_get copies the instance's etcd token for user into buf
 * (false if there is none, or it belongs to another user). The gateway's
 * token cache (gateway.h).
 */
bool
etcd_shared_token_get(const char *user, char *buf, size_t len)
{
	bool		found = false;

	if (etcd_shared == NULL)
		return false;
	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	if (etcd_shared->auth_token[0] != '\0' &&
		strcmp(etcd_shared->auth_user, user) == 0 &&
		strlen(etcd_shared->auth_token) < len)
	{
		strlcpy(buf, etcd_shared->auth_token, len);
		found = true;
	}
	LWLockRelease(etcd_shared->lock);
	return found;
}

/*
 * etcd_shared_token_put publishes a fresh token for the other processes.
 */
void
etcd_shared_token_put(const char *user, const char *token)
{
	if (etcd_shared == NULL || strlen(token) >= ETCD_MAX_TOKEN ||
		strlen(user) >= ETCD_MAX_USER)
		return;
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	strlcpy(etcd_shared->auth_user, user, ETCD_MAX_USER);
	strlcpy(etcd_shared->auth_token, token, ETCD_MAX_TOKEN);
	LWLockRelease(etcd_shared->lock);
}

/*
 * etcd_shared_count counts a gateway event (EtcdGwEvent) for
 * etcd_lock_status.
 */
void
etcd_shared_count(int event)
{
	pg_atomic_uint64 *c = NULL;

	if (etcd_shared == NULL)
		return;
	switch (event)
	{
		case GW_EV_REQUEST:
			c = &etcd_shared->counters.requests;
			break;
		case GW_EV_FAILURE:
			c = &etcd_shared->counters.failures;
			break;
		case GW_EV_FAILOVER:
			c = &etcd_shared->counters.failovers;
			break;
		case GW_EV_AUTHENTICATE:
			c = &etcd_shared->counters.authentications;
			break;
	}
	if (c)
		pg_atomic_fetch_add_u64(c, 1);
}

/*
 * etcd_shared_endpoint_get returns the index of the endpoint of the list
 * endpoints that answered last in this instance (0 if none is known), so
 * a new backend does not start with a member that keeps failing.
 */
int
etcd_shared_endpoint_get(const char *endpoints)
{
	uint32		h = hash_bytes((const unsigned char *) endpoints, strlen(endpoints));
	int			idx = 0;

	if (etcd_shared == NULL)
		return 0;
	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	if (etcd_shared->endpoints_hash == h)
		idx = etcd_shared->endpoint_good;
	LWLockRelease(etcd_shared->lock);
	return idx;
}

void
etcd_shared_endpoint_put(const char *endpoints, int idx)
{
	if (etcd_shared == NULL)
		return;
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	etcd_shared->endpoints_hash = hash_bytes((const unsigned char *) endpoints, strlen(endpoints));
	etcd_shared->endpoint_good = idx;
	LWLockRelease(etcd_shared->lock);
}

/*
 * etcd_adopt_pooled_lease moves a lease the worker granted ahead into this
 * backend's slot (caller: lt_ensure_lease), if one of TTL ttl with at least
 * half its TTL left before its deadline is there. Returns its ID, or 0.
 * The slot's deadline and renewal schedule come with it; the slot is LIVE
 * when this returns.
 */
int64
etcd_adopt_pooled_lease(int ttl, int on_loss)
{
	EtcdLeaseSlot *mine = etcd_my_slot();
	EtcdMono	now = etcd_mono_now();
	int64		id = 0;
	int			i;

	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	for (i = etcd_shared->nbackends; i < etcd_shared->nslots; i++)
	{
		EtcdLeaseSlot *p = &etcd_shared->slots[i];

		if (p->state != LEASE_LIVE || p->ttl != ttl ||
			p->deadline - now < MONO_MS(ttl * 500L))
			continue;
		id = p->lease_id;
		mine->pid = MyProcPid;
		mine->lease_id = id;
		mine->ttl = ttl;
		mine->renewed_at = p->renewed_at;
		mine->deadline = p->deadline;
		mine->next_keepalive = p->next_keepalive;
		mine->on_loss = on_loss;
		mine->loss_expired = false;
		mine->nheld = 0;
		pg_atomic_write_u32(&mine->loss_signalled, 0);
		mine->state = LEASE_LIVE;
		p->state = LEASE_NONE;
		p->lease_id = 0;
		break;
	}
	LWLockRelease(etcd_shared->lock);
	return id;
}

/*
 * etcd_my_slot returns this backend's lease slot.
 */
EtcdLeaseSlot *
etcd_my_slot(void)
{
	Assert(ETCD_MY_SLOT_INDEX() >= 0 && ETCD_MY_SLOT_INDEX() < etcd_shared->nbackends);
	return &etcd_shared->slots[ETCD_MY_SLOT_INDEX()];
}

/*
 * etcd_signal_loss tells the owner of a lost lease that holds locks, once,
 * as it asked (etcd_lock.on_lease_loss): SIGINT cancels its running
 * statement, SIGTERM ends its session; "warn" (and an idle session) learns
 * at its next statement. Called by the worker when it marks the lease lost
 * and by the owner's own deadline timer, whichever comes first; async
 * signal safe (no lock: the fields read are aligned words).
 */
void
etcd_signal_loss(EtcdLeaseSlot *slot)
{
	volatile EtcdLeaseSlot *s = slot;

	if (s->pid <= 0 || s->nheld <= 0 || s->on_loss == ON_LOSS_WARN)
		return;
	if (pg_atomic_exchange_u32(&slot->loss_signalled, 1) != 0)
		return;
	kill(s->pid, s->on_loss == ON_LOSS_TERMINATE ? SIGTERM : SIGINT);
}

/*
 * etcd_wake_worker sets the worker's latch, if it runs.
 */
void
etcd_wake_worker(void)
{
	Latch	   *latch;

	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	latch = etcd_shared->worker_latch;
	LWLockRelease(etcd_shared->lock);
	if (latch)
		SetLatch(latch);
}

/*
 * etcd_queue_release hands a release to the worker and wakes it. Never
 * throws and never waits on the network, so it is safe in transaction
 * callbacks. Returns false if the queue is full (the key then stays until
 * the backend's lease is revoked at exit or expires). late_until (0: none):
 * an acquire of the key may still be applied until then (a request resent
 * after an attempt that may have reached etcd); once the delete is
 * confirmed, the worker reads the key again at that time and deletes what
 * it finds. A key of unknown revision (token 0: its acquire was cut short)
 * gets RESOLVE_SETTLE_MS from now at least.
 */
bool
etcd_queue_release(EtcdReleaseKind kind, int keykind, int64 lease_id, const char *key,
				   int keylen, int64 token, bool held, bool attempted,
				   EtcdMono late_until)
{
	return queue_release(kind, keykind, lease_id, key, keylen, token, held,
						 attempted, late_until, false);
}

/*
 * etcd_queue_settle: key is gone as far as etcd answered (its release was
 * confirmed, or it was never put), but an acquire attempt of it may still
 * be applied until late_until. The worker reads it at that time and
 * deletes it if it exists. A new acquire of the key by this session takes
 * the entry back (etcd_reclaim_release): its txn creates the key or finds
 * the late one as its own. false: the queue is full.
 */
bool
etcd_queue_settle(int keykind, int64 lease_id, const char *key, int keylen,
				  EtcdMono late_until)
{
	return queue_release(REL_DELETE, keykind, lease_id, key, keylen, 0, false,
						 false, late_until, true);
}

static bool
queue_release(EtcdReleaseKind kind, int keykind, int64 lease_id, const char *key,
			  int keylen, int64 token, bool held, bool attempted,
			  EtcdMono late_until, bool settle)
{
	int			i;
	bool		queued = false;
	EtcdMono	now = etcd_mono_now();

	if (kind == REL_DELETE && token == 0)
		late_until = Max(late_until, now + MONO_MS(RESOLVE_SETTLE_MS));

	if (keylen >= ETCD_MAX_KEY)
		return false;
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < etcd_shared->nreleases; i++)
	{
		EtcdRelease *r = &etcd_shared->releases[i];

		if (r->state != REL_FREE)
			continue;
		r->state = REL_PENDING;
		r->kind = kind;
		r->keykind = keykind;
		r->alone = false;
		r->held = held;
		r->attempted = attempted;
		r->lease_id = lease_id;
		r->token = token;
		r->queued_at = now;
		r->late_until = late_until;
		/* a settle read: found gone already; read when the late one landed */
		r->settle_at = settle ? late_until : 0;
		r->retry_at = settle ? late_until : 0;
		r->tried = settle;		/* nobody waits for it */
		r->seq = ++etcd_shared->next_seq;
		if (!settle)
		{
			/* what a commit waits for: a settle read is nobody's release */
			etcd_last_queued.idx = i;
			etcd_last_queued.seq = r->seq;
		}
		r->keylen = keylen;
		if (keylen > 0)
			memcpy(r->key, key, keylen);
		r->key[keylen] = '\0';
		etcd_shared->npending++;
		if (i >= etcd_shared->nrelused)
			etcd_shared->nrelused = i + 1;
		queued = true;
		break;
	}
	LWLockRelease(etcd_shared->lock);
	if (queued)
		etcd_wake_worker();
	return queued;
}

/*
 * etcd_release_settled says whether the worker's first attempt at a queued
 * release has finished (sent and answered, or failed), or it is gone.
 */
bool
etcd_release_settled(const EtcdReleaseRef *ref)
{
	EtcdRelease *r;
	bool		settled;

	if (ref->idx < 0)
		return true;
	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	r = &etcd_shared->releases[ref->idx];
	settled = r->seq != ref->seq || r->state == REL_FREE || r->tried;
	LWLockRelease(etcd_shared->lock);
	return settled;
}

/*
 * etcd_reclaim_release looks for a queued release of key by lease_id. A
 * pending release of a held key that was never sent is taken back: the key
 * still exists and is still the oldest under its name, so the caller keeps
 * holding the lock with *token and sends nothing to etcd. A release that is
 * being sent or may already have reached etcd (a send that failed or timed
 * out, a worker that died mid-send), or of a key that was only a queue
 * place, or that was taken as another kind (keykind), or an election's,
 * must finish first: RECLAIM_WAIT.
 *
 * A settle read (a key found gone, kept only in case an acquire attempt of
 * it lands late: token 0, settle_at set) is dropped: a new acquire of the
 * key by this session handles that key either way (its txn creates it, or
 * finds it as its own), and the caller's entry watches for the late attempt
 * from now on (*late_until). Not for elections, nor across kinds (a lock
 * and an election share a key): a late key would carry another value.
 * Such a read is waited for (RECLAIM_WAIT), and nothing is taken back
 * meanwhile, as its read could delete the key taken back; *wait_until says
 * when it is due.
 */
EtcdReclaim
etcd_reclaim_release(int64 lease_id, const char *key, int keylen, int keykind,
					 int64 *token, EtcdMono *late_until, EtcdMono *wait_until)
{
	EtcdReclaim result = RECLAIM_NONE;
	int			i,
				take = -1;
	bool		wait = false;

	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	for (i = 0; etcd_shared->npending > 0 && i < etcd_shared->nrelused; i++)
	{
		EtcdRelease *r = &etcd_shared->releases[i];

		if (r->state == REL_FREE || r->kind != REL_DELETE ||
			r->lease_id != lease_id || r->keylen != keylen ||
			memcmp(r->key, key, keylen) != 0)
			continue;
		if (r->state == REL_PENDING && r->token == 0 && r->settle_at != 0)
		{
			if (r->keykind == keykind && keykind != ETCD_KEY_ELECTION)
			{
				*late_until = Max(*late_until, r->late_until);
				r->state = REL_FREE;
				etcd_shared->npending--;
			}
			else
			{
				wait = true;
				*wait_until = Max(*wait_until, r->settle_at);
			}
			continue;
		}
		if (take >= 0 || wait)
			continue;			/* the first other release decides */
		/*
		 * Taken back only as what it was: an exclusive lock and an
		 * election share a key, and an election key carries its
		 * candidate's value, so neither is adopted by the other kind nor
		 * by a new campaign (they wait for the delete, then put anew).
		 */
		if (r->state == REL_PENDING && r->held && !r->attempted &&
			r->keykind == keykind && keykind != ETCD_KEY_ELECTION)
			take = i;
		else
			wait = true;
	}
	if (wait)
		result = RECLAIM_WAIT;
	else if (take >= 0)
	{
		EtcdRelease *r = &etcd_shared->releases[take];

		*token = r->token;
		*late_until = Max(*late_until, r->late_until);
		r->state = REL_FREE;
		etcd_shared->npending--;
		result = RECLAIM_TAKEN;
	}
	LWLockRelease(etcd_shared->lock);
	return result;
}

/*
 * etcd_release_pending says whether a release of key by lease_id is still
 * queued or being sent.
 */
bool
etcd_release_pending(int64 lease_id, const char *key, int keylen)
{
	bool		found = false;
	int			i;

	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	for (i = 0; i < etcd_shared->nrelused && etcd_shared->npending > 0; i++)
	{
		EtcdRelease *r = &etcd_shared->releases[i];

		if (r->state != REL_FREE && r->kind == REL_DELETE &&
			!(r->state == REL_PENDING && r->settle_at != 0) &&	/* found gone */
			r->lease_id == lease_id && r->keylen == keylen &&
			memcmp(r->key, key, keylen) == 0)
		{
			found = true;
			break;
		}
	}
	LWLockRelease(etcd_shared->lock);
	return found;
}

/*
 * etcd_lockinfo_add publishes a lock this backend awaits or holds, for the
 * etcd_locks view. NULL if the table is full: the lock works, it is only
 * not shown.
 */
EtcdLockInfo *
etcd_lockinfo_add(const char *prefix, const char *name, int kind, int permits,
				  int64 lease_id)
{
	EtcdLockInfo *found = NULL;
	int			n = etcd_shared->ninfos;
	int			start = (ETCD_MY_SLOT_INDEX() * 8) % n;
	int			k;

	/*
	 * Start in this backend's own region (8 entries per backend), so the
	 * usual search touches one or two entries, not the whole table.
	 */
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	for (k = 0; k < n; k++)
	{
		EtcdLockInfo *info = &etcd_shared->infos[(start + k) % n];

		if (info->mode != LOCKINFO_FREE)
			continue;
		info->mode = LOCKINFO_WAITING;
		info->kind = kind;
		info->permits = permits;
		info->pid = MyProcPid;
		info->owner = ETCD_MY_SLOT_INDEX();
		info->nsession = 0;
		info->nxact = 0;
		info->token = 0;
		info->lease_id = lease_id;
		info->since = GetCurrentTimestamp();
		info->dbid = MyDatabaseId;
		strlcpy(info->prefix, prefix ? prefix : "", sizeof(info->prefix));
		strlcpy(info->name, name, sizeof(info->name));
		found = info;
		break;
	}
	LWLockRelease(etcd_shared->lock);
	if (found == NULL)
		pg_atomic_fetch_add_u32(&etcd_shared->counters.unshown, 1);
	return found;
}

/*
 * etcd_lockinfo_set updates a published entry (no-op for NULL).
 */
void
etcd_lockinfo_set(EtcdLockInfo *info, EtcdLockMode mode, int nsession,
				  int nxact, int64 token)
{
	if (info == NULL)
		return;
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	if (info->mode != mode)
		info->since = GetCurrentTimestamp();
	info->mode = mode;
	info->nsession = nsession;
	info->nxact = nxact;
	info->token = token;
	LWLockRelease(etcd_shared->lock);
}

void
etcd_lockinfo_remove(EtcdLockInfo *info)
{
	if (info == NULL)
		return;
	LWLockAcquire(etcd_shared->lock, LW_EXCLUSIVE);
	info->mode = LOCKINFO_FREE;
	LWLockRelease(etcd_shared->lock);
}
