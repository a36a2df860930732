/*
 * lockops.h
 *		The lock algorithm as etcd operations (acquire, wait, release) and
 *		lease calls. Knows nothing of SQL; speaks through gateway.h.
 */
#ifndef ETCD_LOCK_LOCKOPS_H
#define ETCD_LOCK_LOCKOPS_H

#include "gateway.h"

/*
 * What a lock key is, from its last segment: "<lease hex>" (exclusive: our
 * exclusive locks, Go's mutex and election keys), "<lease hex>.shared",
 * "<lease hex>.sem<N>" (one of N permits). A marker this version does not
 * know is exclusive (fail-safe).
 */
typedef enum EtcdKeyKind
{
	ETCD_KEY_NONE = -1,			/* not a lock key */
	ETCD_KEY_EXCLUSIVE = 0,
	ETCD_KEY_SHARED,
	ETCD_KEY_SEMAPHORE,
	ETCD_KEY_ELECTION			/* a candidate: on etcd an exclusive key (as
								 * Go's Election), holding the user's value */
} EtcdKeyKind;

#define ETCD_MAX_PERMITS	1000

/* A lock name turned into etcd keys: key = pfx + lease id in hex + marker. */
typedef struct EtcdLockKeys
{
	const char *prefix;			/* etcd_lock.prefix */
	int			prefixlen;
	int64		lease_id;		/* ours */
	char	   *pfx;			/* prefix + name + "/" */
	int			pfxlen;
	char	   *key;			/* pfx + "%llx" of the lease + marker */
	int			keylen;
	EtcdKeyKind kind;			/* of our key */
	int			permits;		/* ETCD_KEY_SEMAPHORE: N */
} EtcdLockKeys;

extern void etcd_lock_keys(EtcdLockKeys *k, const char *prefix,
						   const char *name, int64 lease_id,
						   EtcdKeyKind kind, int permits);
extern const char *etcd_key_marker(EtcdKeyKind kind, int permits);
extern const char *etcd_kind_name(EtcdKeyKind kind);

extern int64 etcd_lease_grant(int64 id, const char *body);
extern char *etcd_lease_body(int64 lease_id);
extern int64 etcd_new_lease_id(int ttl, char **body);
extern bool etcd_parse_lease_grant(struct json_t *root, void *arg);
extern char *etcd_key_range_body(const char *key, int keylen);
extern bool etcd_parse_create_rev(struct json_t *root, void *arg);
extern bool etcd_parse_keepalive(struct json_t *root, void *arg);
extern const char *etcd_release_request(const char *key, int keylen,
										int64 token, char **body);
extern char *etcd_release_batch_body(char **keys, int *keylens, int64 *tokens,
									 int n);

extern bool etcd_lock_acquire(const EtcdLockKeys *k, int64 lease_id,
							  const char *value, bool try_only, int64 *rev);
extern void etcd_lock_touch(const EtcdLockKeys *k, int64 rev);

#define ETCD_MAX_TXN_NAMES	128	/* etcd's default --max-txn-ops */
extern void etcd_lock_acquire_many(EtcdLockKeys *ks, int n, int64 lease_id,
								   const char *value, int64 *rev, bool *held);
extern bool etcd_lock_first(const EtcdLockKeys *k, int64 rev);
extern void etcd_deadlock_check(const EtcdLockKeys *k, int64 rev);
extern bool etcd_lock_wait(const EtcdLockKeys *k, int64 rev,
						   TimestampTz deadline, bool (*lease_ok) (void));
extern bool etcd_lock_release(const char *key, int keylen, int64 token,
							  EtcdStatus *st);

extern bool etcd_locks_still_held(char **keys, int *keylens, int64 *tokens,
								  int n);

/* One holder of a lock name as etcd shows it, for etcd_lock_holders(). */
typedef struct EtcdHolder
{
	char	   *name;			/* lock name (prefix stripped) */
	int64		token;			/* holder's create_revision */
	int64		lease_id;		/* holder's lease */
	char	   *value;			/* holder's value ("" for Go clients) */
	int			waiters;		/* keys of the name that do not hold */
	int64		ttl;			/* holder lease's remaining TTL, -1 if gone */
	EtcdKeyKind kind;			/* the holder key's kind */
	int			permits;		/* semaphore: N */
} EtcdHolder;

/* The leader of an election (its oldest key), for etcd_leader(). */
typedef struct EtcdLeader
{
	bool		exists;
	char	   *value;
	int64		token;			/* create_revision */
	int64		revision;		/* mod_revision */
	int64		lease_id;
	int64		header_rev;		/* the revision read at */
} EtcdLeader;

extern void etcd_election_leader(const EtcdLockKeys *k, EtcdLeader *out);
extern int64 etcd_election_proclaim(const EtcdLockKeys *k, int64 token,
									const char *value);
extern bool etcd_election_observe(const EtcdLockKeys *k, int64 last_revision,
								  TimestampTz deadline, EtcdLeader *out);

extern EtcdHolder *etcd_lock_holders(const char *prefix, const char *name_prefix,
									 int *nholders);

#endif
