/*
 * shmem.h
 *		The only state the backends and the background worker share: one
 *		lease slot per backend and the queue of releases the worker performs.
 */
#ifndef ETCD_LOCK_SHMEM_H
#define ETCD_LOCK_SHMEM_H

#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "gateway.h"
#include "guc.h"

/*
 * Times shared between processes are microseconds on CLOCK_BOOTTIME: one
 * clock for every process of the machine, never stepped by NTP, and still
 * counting while the machine is suspended (as etcd's own clock does, so a
 * lease that etcd expired during a suspend counts as expired here too).
 */
typedef int64 EtcdMono;

extern EtcdMono etcd_mono_now(void);

#define MONO_MS(ms)		((EtcdMono) (ms) * 1000)

typedef enum EtcdLeaseState
{
	LEASE_NONE = 0,				/* slot unused */
	LEASE_LIVE,					/* the worker keeps it alive */
	LEASE_LOST					/* etcd says it is gone */
} EtcdLeaseState;

/*
 * One per backend, indexed by ETCD_MY_SLOT_INDEX() (compat.h); after them
 * ETCD_LEASE_POOL slots of leases the worker granted ahead (pid 0), which a
 * backend adopts for its first lock instead of waiting for a grant.
 */
#define ETCD_LEASE_POOL		4

typedef struct EtcdLeaseSlot
{
	int			state;			/* EtcdLeaseState */
	pid_t		pid;
	int64		lease_id;
	int			ttl;			/* seconds */
	EtcdMono	next_keepalive; /* when the worker renews it next */
	EtcdMono	renewed_at;		/* send time of the last successful renewal
								 * (or of the grant) */
	EtcdMono	deadline;		/* LEASE_DEADLINE: rely on it only before */
	int			on_loss;		/* EtcdOnLeaseLoss of the owner */
	int			nheld;			/* locks the owner holds on this lease */
	bool		loss_expired;	/* lost because the local deadline passed */
	pg_atomic_uint32 loss_signalled;	/* the owner was told (once) */
	int64		granting_id;	/* a grant the owner sent, not answered yet:
								 * listed in the lease file all the same */
} EtcdLeaseSlot;

/*
 * The local deadline of a lease: the send time of its last successful
 * renewal plus its TTL, minus a safety margin (a tenth of the TTL, at least
 * 500 ms). Past it, etcd may have expired the lease, so its locks count as
 * lost even if etcd has not said so. Backends check it themselves; the
 * worker is not trusted to have noticed.
 */
/*
 * How long after an acquire request ended one of its attempts may still be
 * applied by etcd: a proposal gets 5 s plus two election timeouts (7 s by
 * default), and the request itself lasted request_timeout at most; twice
 * that, for a member's own delays.
 */
#define RESOLVE_SETTLE_MS	(2L * etcd_lock_request_timeout + 7000L)

#define LEASE_MARGIN_MS(ttl)	Max(500L, (long) (ttl) * 100L)
#define LEASE_DEADLINE(sent, ttl) \
	((sent) + MONO_MS((long) (ttl) * 1000L - LEASE_MARGIN_MS(ttl)))

typedef enum EtcdReleaseState
{
	REL_FREE = 0,
	REL_PENDING,				/* waiting for the worker */
	REL_BUSY					/* the worker is sending it */
} EtcdReleaseState;

typedef enum EtcdReleaseKind
{
	REL_DELETE,					/* delete key if create_revision == token */
	REL_REVOKE					/* revoke lease_id (backend exited) */
} EtcdReleaseKind;

typedef struct EtcdRelease
{
	int			state;			/* EtcdReleaseState */
	int			kind;			/* EtcdReleaseKind */
	bool		held;			/* the key was a held lock, not a queue place */
	bool		attempted;		/* may have reached etcd: never take back */
	bool		tried;			/* the worker's first attempt has finished */
	int			keykind;		/* EtcdKeyKind the key was taken as (a lock
								 * and an election share a key) */
	bool		alone;			/* sent in no batch (one batch with it was
								 * refused as a whole) */
	uint64		seq;			/* which queuing this is (entries are reused) */
	int64		lease_id;
	int64		token;			/* create_revision of the key */
	EtcdMono	queued_at;
	EtcdMono	retry_at;		/* after a failure: not before this */
	EtcdMono	settle_at;		/* a queue place of unknown revision found
								 * gone: read again at this time, as its
								 * acquire may still be applied late */
	EtcdMono	late_until;		/* an acquire of the key may still be
								 * applied until then (a resent or cut-short
								 * request): a delete confirmed before it is
								 * followed by a read at this time */
	int			keylen;
	char		key[ETCD_MAX_KEY];
} EtcdRelease;

/*
 * What etcd_locks shows: one entry per lock name a backend holds or awaits.
 * Written only by its owner backend (under the lock), read by anyone.
 */
typedef enum EtcdLockMode
{
	LOCKINFO_FREE = 0,
	LOCKINFO_WAITING,
	LOCKINFO_HELD
} EtcdLockMode;

typedef struct EtcdLockInfo
{
	int			mode;			/* EtcdLockMode */
	int			kind;			/* EtcdKeyKind of the key */
	int			permits;		/* semaphore: N */
	pid_t		pid;
	int			owner;			/* backend slot */
	int			nsession;		/* session-level holds */
	int			nxact;			/* transaction-level holds */
	int64		token;
	int64		lease_id;
	TimestampTz since;
	Oid			dbid;			/* the owner's database */
	char		prefix[ETCD_MAX_PREFIX + 1];	/* etcd_lock.prefix when taken */
	char		name[ETCD_MAX_NAME + 1];
} EtcdLockInfo;

#define ETCD_MAX_TOKEN		ETCD_GW_MAX_TOKEN
#define ETCD_MAX_USER		256

/* Counters for etcd_lock_status, instance-wide since start. */
typedef enum EtcdCallCount
{
	/* the lock call ended: */
	ETCD_CALL_ACQUIRED,
	ETCD_CALL_BUSY,
	ETCD_CALL_TIMED_OUT,
	ETCD_CALL_FAILED,
	ETCD_CALL_WAIT,				/* it waited behind another holder */
	ETCD_CALL_HANDOFF,			/* ... and then held */
	ETCD_CALL_NKINDS
} EtcdCallCount;

typedef struct EtcdCounters
{
	pg_atomic_uint64 requests;	/* HTTP requests sent to etcd */
	pg_atomic_uint64 failures;	/* ... that got no answer (or a 5xx) */
	pg_atomic_uint64 failovers; /* moves to another endpoint */
	pg_atomic_uint64 authentications;
	pg_atomic_uint64 leases_lost;
	pg_atomic_uint32 owed;		/* releases that did not fit the queue */
	pg_atomic_uint32 unshown;	/* locks not in etcd_locks (registry full) */
	/* lock calls by outcome, waits, handoffs (EtcdCallCount; etcd_lock_stats,
	 * reset by etcd_lock_stats_reset) */
	pg_atomic_uint64 calls[ETCD_CALL_NKINDS];
} EtcdCounters;

/* what etcd_lock_stats counts from (etcd_lock_stats_reset) */
typedef struct EtcdStatsBase
{
	TimestampTz reset_at;
	uint64		requests;
	uint64		failures;
	uint64		failovers;
	uint64		leases_lost;
} EtcdStatsBase;

typedef struct EtcdShared
{
	LWLock	   *lock;			/* protects everything below */
	Latch	   *worker_latch;
	pid_t		worker_pid;

	/* the worker's view of etcd, for etcd_lock_status */
	bool		etcd_reachable;
	TimestampTz reachable_since;	/* last change (wall clock, for display) */
	char		endpoint[256];	/* the endpoint the worker uses */
	char		last_error[256];	/* the worker's last failed request */
	char		auth_error[256];	/* why the last authentication failed
									 * ('' once one succeeds) */

	/* the endpoint that answered last, for new backends (gateway hint) */
	uint32		endpoints_hash; /* of the etcd_lock.endpoints it belongs to */
	int			endpoint_good;

	/*
	 * The etcd auth token of etcd_lock.username, shared by every process
	 * of the instance: one authentication per instance, not per backend.
	 */
	char		auth_user[ETCD_MAX_USER];
	char		auth_token[ETCD_MAX_TOKEN];

	EtcdCounters counters;
	EtcdStatsBase stats_base;	/* under lock */
	bool		leases_recovered;	/* the previous run's leases are revoked */
	uint64		next_seq;		/* EtcdRelease.seq of the next release queued */

	ConditionVariable release_cv;	/* broadcast when a release finished */
	int			nslots;			/* backend slots, then the pool's */
	int			nbackends;		/* slots [0, nbackends) belong to backends */
	int			nreleases;
	int			npending;		/* entries in state PENDING or BUSY */
	int			nrelused;		/* entries at or past this were never used */
	EtcdLeaseSlot *slots;
	EtcdRelease *releases;
	int			ninfos;
	EtcdLockInfo *infos;
} EtcdShared;

extern EtcdShared *etcd_shared;


extern void etcd_count_call(EtcdCallCount what);
extern void etcd_stats_reset(void);

extern void etcd_shmem_install_hooks(void);
extern bool etcd_shared_token_get(const char *user, char *buf, size_t len);
extern void etcd_shared_token_put(const char *user, const char *token);
extern void etcd_shared_count(int event);
extern int	etcd_shared_endpoint_get(const char *endpoints);
extern void etcd_shared_endpoint_put(const char *endpoints, int idx);
extern EtcdLeaseSlot *etcd_my_slot(void);
extern int64 etcd_adopt_pooled_lease(int ttl, int on_loss);
extern void etcd_wake_worker(void);
extern void etcd_signal_loss(EtcdLeaseSlot *slot);
extern bool etcd_queue_release(EtcdReleaseKind kind, int keykind, int64 lease_id,
							   const char *key, int keylen, int64 token,
							   bool held, bool attempted, EtcdMono late_until);
extern bool etcd_queue_settle(int keykind, int64 lease_id, const char *key,
							  int keylen, EtcdMono late_until);

/* One queued release, to wait for its first attempt (etcd_release_settled). */
typedef struct EtcdReleaseRef
{
	int			idx;			/* -1: none */
	uint64		seq;
} EtcdReleaseRef;

extern EtcdReleaseRef etcd_last_queued;
extern bool etcd_release_settled(const EtcdReleaseRef *ref);

typedef enum EtcdReclaim
{
	RECLAIM_NONE,				/* nothing queued for this key */
	RECLAIM_TAKEN,				/* a queued release of a held key was taken back */
	RECLAIM_WAIT				/* a release of it is in flight or not reclaimable */
} EtcdReclaim;

extern EtcdLockInfo *etcd_lockinfo_add(const char *prefix, const char *name,
									   int kind, int permits,
									   int64 lease_id);
extern void etcd_lockinfo_set(EtcdLockInfo *info, EtcdLockMode mode,
							  int nsession, int nxact, int64 token);
extern void etcd_lockinfo_remove(EtcdLockInfo *info);
extern bool etcd_release_pending(int64 lease_id, const char *key, int keylen);

extern EtcdReclaim etcd_reclaim_release(int64 lease_id, const char *key,
										int keylen, int keykind, int64 *token,
										EtcdMono *late_until, EtcdMono *wait_until);

#endif
