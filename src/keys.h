/*
 * keys.h
 *		The key scheme (keys.c), for the lock algorithm's modules only
 *		(lockops.c, deadlock.c, election.c, holders.c): what a listed key
 *		is, which kinds block which, and reading lists and pages of keys.
 *		The public part (EtcdLockKeys, etcd_lock_keys, the markers) is in
 *		lockops.h.
 */
#ifndef ETCD_LOCK_KEYS_H
#define ETCD_LOCK_KEYS_H

#include <jansson.h>

#include "lib/stringinfo.h"
#include "gateway.h"
#include "lockops.h"

/* one listed key and the lock key it is, or other data */
extern bool ek_kv_fields(json_t *kv, char **key, int *keylen, int64 *rev,
						 int64 *modrev, int64 *lease);
extern EtcdKeyKind ek_key_kind(const char *pfx, int pfxlen, const char *key,
							   int keylen, int64 *lease, int *permits);

/* the one blocking rule, and the kind families that may not mix */
extern bool ek_kinds_block(EtcdKeyKind mine, EtcdKeyKind older);
extern bool ek_key_blocks(const EtcdLockKeys *k, EtcdKeyKind kind, int64 lease);
extern const char *ek_kind_conflict(const EtcdLockKeys *k, EtcdKeyKind kind,
									int permits);
extern bool ek_is_lock_holder_value(const char *v);

/* request bodies: the range of a name, of a prefix, of one create revision */
extern void ek_append_range_end(StringInfo buf, const char *pfx, int len);
extern void ek_append_prefix_range(StringInfo b, const char *start, int len);
extern void ek_append_rev_range(StringInfo b, const EtcdLockKeys *k, int64 rev,
								bool keys_only);

/* answers: a txn's first key, pages cut at a whole revision */
#define PRED_PAGE	64			/* keys read per page when looking for a predecessor */
extern json_t *ek_first_kv(json_t *responses, size_t i, bool *ok);
extern int64 ek_page_cut(json_t *kvs, int limit);

/* every lock key under a prefix (deadlock detection, holders) */
/* One lock key listed from a range over the prefix (ek_listed_lock_name). */
typedef struct ListedKey
{
	char	   *name;			/* lock name (prefix stripped) */
	char	   *key;			/* full key */
	int			keylen;
	int64		rev;			/* create_revision */
	int64		lease;
	EtcdKeyKind kind;
	int			permits;
	char	   *value;			/* decoded; "" if none or keys only */
	int			lidx;			/* deadlock graph: index of its lease */
} ListedKey;

typedef struct ListedKeys
{
	const char *prefix;
	int			prefixlen;
	int			max;			/* more keys than this in the answer: too_many
								 * (0: no limit) */
	bool		too_many;
	bool		no_permits;		/* leave permit keys out */
	ListedKey  *keys;
	int			n;
	int			cap;
} ListedKeys;

extern int	ek_listed_lock_name(const char *prefix, int prefixlen,
								const char *key, int keylen, int64 *lease,
								EtcdKeyKind *kind, int *permits);
extern bool ek_parse_listed(json_t *root, void *arg);
extern int	ek_listed_cmp(const void *a, const void *b);

/* shared by the waits (lockops.c) and observe (election.c) */
extern void ek_watch_backoff(EtcdWatchResult wr, TimestampTz deadline,
							 int *backoff_ms);

#endif
