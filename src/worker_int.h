/*
 * worker_int.h
 *		Inside the background worker: its loop and requests (worker.c), the
 *		leases it renews and watches (renewals.c), the releases it sends
 *		(releases.c). Nothing else includes it.
 */
#ifndef ETCD_LOCK_WORKER_INT_H
#define ETCD_LOCK_WORKER_INT_H

#include <signal.h>

#include "gateway.h"
#include "shmem.h"

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

#define KA_STREAM_RETRY_MS	1000

/* the worker's state (one struct; w_shutdown, set by the signal handler, is worker.c's) */
typedef struct WorkerState
{
	WorkerReq	reqs[MAX_INFLIGHT];	/* requests in flight; the index is the tag */

	/* the keepalive stream (renewals.c) */
	KaSent	   *ka_fifo;		/* ring of nslots entries */
	int			ka_head;
	int			ka_count;
	EtcdMono	ka_stream_retry_at; /* no new stream before this */
	bool	   *ka_inflight;	/* per lease slot */

	/* the lease pool (renewals.c) */
	bool		pool_granting[ETCD_LEASE_POOL]; /* a grant in flight */
	int64		pool_pending[ETCD_LEASE_POOL];	/* a grant not known to be
												 * applied or not: resent
												 * with the same ID */
	int			pool_pending_ttl[ETCD_LEASE_POOL];
	EtcdMono	pool_pending_sent[ETCD_LEASE_POOL]; /* its first send: etcd's
													 * TTL may have started
													 * then */
	EtcdMono	pool_retry_at;
	uint64		leases_sig;		/* what LEASES_FILE lists now */
	int			leases_n;

	/* releases (releases.c) */
	int			nreleases_inflight;
	int			batch_max;		/* lowered when etcd refuses a batch as too
								 * many operations (its --max-txn-ops) */

	/* etcd reachability as the worker sees it, for state-change logs */
	bool		reachable;
	EtcdMono	down_since;
	int64		failed;			/* failed requests since the outage began */
	EtcdMono	next_summary;
	EtcdMono	next_error_log;
	char		endpoint[256];

	/* credentials */
	bool		cred_check;		/* a credentials check is in flight */
	bool		cred_retry;		/* ... is to be started again */
	uint32		cred_stamp;		/* etcd_gateway_credentials_stamp now */

	EtcdMono	shutdown_at;
} WorkerState;

extern WorkerState wk;
extern volatile sig_atomic_t w_shutdown;

/* worker.c: requests and reachability */
extern bool w_catch(bool (*fn) (void *arg, EtcdStatus *st), void *arg, EtcdStatus *st);
extern bool w_async_start(const char *path, const char *body, EtcdParseFn parse, void *parg, int timeout_ms, int tag, EtcdStatus *st);
extern bool stream_open_fn(void *arg, EtcdStatus *st);
extern bool lease_in_use(int64 lease_id);
extern int free_req(void);
extern void note_result(const EtcdStatus *st, bool ok);

/* renewals.c: leases, their deadlines, keepalives, the pool, the leases file */
extern void check_deadlines(EtcdMono now, EtcdMono *next);
extern void start_keepalives(EtcdMono now, EtcdMono *next);
extern void finish_keepalive(WorkerReq *req, EtcdAsyncResult *res);
extern void ka_stream_reopen(void);
extern void ka_stream_collect(EtcdMono *next);
extern void refill_pool(EtcdMono now, EtcdMono *next);
extern void finish_grant(WorkerReq *req, EtcdAsyncResult *res);
extern void record_leases(void);
extern void revoke_previous_leases(void);

/* releases.c: the release queue's requests */
extern void start_releases(EtcdMono now, EtcdMono *next);
extern void finish_release(WorkerReq *req, EtcdAsyncResult *res);
extern void finish_resolve(WorkerReq *req, EtcdAsyncResult *res);

#endif
