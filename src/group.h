/*
 * group.h
 *		Group commit: the lock txns of many backends of one instance sent as
 *		one etcd txn of nested txns (issue 21).
 */
#ifndef ETCD_LOCK_GROUP_H
#define ETCD_LOCK_GROUP_H

#include "gateway.h"

/*
 * etcd_group_request is etcd_request for a txn body (POST /v3/kv/txn) that
 * may travel in a batch with other backends' txns. tags name what the txn
 * writes (lock names' key ranges, at most ETCD_GROUP_MAX_TAGS): two members
 * with a tag in common never share a batch, since a txn gives every key it
 * puts the same create_revision and a name's keys must be ordered by it.
 * An acquire txn has 2 operations a name in its longest list, a release 1
 * (etcd counts them against --max-txn-ops). ntags 0: sent alone.
 * The answer the parse callback gets is the member's own txn answer, as if
 * it had been sent alone (with the batch's header).
 */
typedef enum EtcdGroupKind
{
	ETCD_GROUP_ACQUIRE,			/* an acquire txn: 2 operations a branch */
	ETCD_GROUP_RELEASE			/* a compare-and-delete txn: 1 */
} EtcdGroupKind;

#define ETCD_GROUP_MAX_TAGS	8	/* names of one member (a multi-lock) */

extern bool etcd_group_request(EtcdGroupKind kind, const char *body,
							   EtcdParseFn parse, void *arg,
							   char *const *tags, const int *taglens,
							   int ntags, EtcdStatus *st);

#define ETCD_GROUP_HIST		128 /* latency buckets: 4 per power of 2 µs */

/* statistics of the instance's acquire and release txns (etcd_lock_stats) */
typedef struct EtcdGroupStats
{
	uint64		txns[2];		/* txns asked for, by EtcdGroupKind */
	uint64		requests;		/* etcd requests they took */
	uint64		batches;		/* ... of which batches (2 members or more) */
	uint64		members;		/* members the batches carried */
	int			max_members;	/* the largest batch */
	uint64		resent_alone;	/* members sent again alone after their batch
								 * failed or was refused */
	int			max_ops;		/* the txn operation limit in use */
	uint64		hist[ETCD_GROUP_HIST];	/* request latencies */
} EtcdGroupStats;

extern void etcd_group_stats(EtcdGroupStats *out);
extern void etcd_group_stats_reset(void);
extern double etcd_group_percentile(const EtcdGroupStats *s, double q);

extern Size etcd_group_shmem_size(void);
extern void etcd_group_shmem_init(void *p, bool found);

#endif
