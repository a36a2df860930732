/*
 * locktable_int.h
 *		Inside the backend's local lock table: its entries and their states
 *		(locktable.c), the session's lease and how its loss is told
 *		(session.c), the acquire drivers (acquire.c). Nothing else includes
 *		it.
 */
#ifndef ETCD_LOCK_LOCKTABLE_INT_H
#define ETCD_LOCK_LOCKTABLE_INT_H

#include "lib/stringinfo.h"
#include "utils/hsearch.h"
#include "utils/timeout.h"

#include "lockops.h"
#include "shmem.h"

typedef struct LocalAcq
{
	SubTransactionId subid;		/* InvalidSubTransactionId once committed */
	bool		xact;			/* transaction scope */
} LocalAcq;

/*
 * The states of a local entry, and the only transitions (lt_set_state
 * checks every one against lt_moves):
 *
 *   WAITING    an acquire of its key is in progress; no acquisition yet
 *   HELD       nacq > 0: the key holds; relied on only within the lease
 *              deadline (lt_lease_lost) and while no delete was sent
 *   RELEASING  the last acquisition went: the delete is being sent or
 *              handed to the worker (lt_release_now, _sync, _async)
 *   OWED       no acquisition, its release did not fit the release queue and
 *              was never sent: lt_flush_owed queues it; an acquire of the
 *              name adopts the key (it is still ours)
 *   OWED_SENT  the same, but the delete (or an acquire's put) may have
 *              reached etcd: never adopted, never taken back
 *
 * An entry leaves the table (lt_free_entry) for one of three reasons: its
 * release was confirmed or handed to the worker (LT_GONE_RELEASED, from
 * any state but WAITING), it has no key in etcd (LT_GONE_UNUSED, only
 * from WAITING), or the lease went (LT_GONE_LEASE: etcd removes every key
 * with it). lt_set_state and lt_free_entry say (WARNING, XX000) when a
 * move breaks these rules.
 */
typedef enum LtState
{
	LT_WAITING,
	LT_HELD,
	LT_RELEASING,
	LT_OWED,
	LT_OWED_SENT
} LtState;

#define LT_NSTATES	(LT_OWED_SENT + 1)
#define LT_IS_OWED(e)	((e)->state == LT_OWED || (e)->state == LT_OWED_SENT)

typedef enum LtGone
{
	LT_GONE_RELEASED,			/* its release was confirmed or queued */
	LT_GONE_UNUSED,				/* it has no key in etcd to release */
	LT_GONE_LEASE				/* the lease went, and every key with it */
} LtGone;

typedef struct LocalLock
{
	char		pfx[ETCD_MAX_KEY];	/* hash key: prefix + name + "/", then
									 * ".shared" or ".sem" for those kinds */
	EtcdKeyKind kind;
	int			permits;		/* semaphore: N */
	char	   *name;
	char	   *key;
	int			keylen;
	int64		token;
	int64		lease_id;
	int			nacq;
	int			maxacq;
	LocalAcq   *acqs;
	EtcdLockInfo *info;			/* our entry in the etcd_locks view */
	bool		counted;		/* counted in the slot's nheld */
	LtState		state;
	EtcdMono	late_until;		/* an attempt of an acquire of the key may
								 * still be applied until then (a request
								 * resent after one that may have reached
								 * etcd): its release, or its giving up,
								 * has the worker read the key then
								 * (lt_settle_late); 0: none */
} LocalLock;

/* this backend's lock-table state (one struct; session.c owns the lease) */
typedef struct LtSession
{
	HTAB	   *locks;			/* LocalLock by hash key (lt_hash_key) */
	char		pinned_prefix[ETCD_MAX_PREFIX + 1];	/* lt_prefix */
	int64		lease;			/* this backend's lease, 0 if none */
	int			xact_acqs;		/* acquisitions made in the current xact */
	bool		exit_registered;
	bool		loss_reported;	/* the loss was told (error/WARNING) */
	bool		dead;			/* lease counted as lost: for good */
	TimeoutId	timeout_id;		/* the lease-deadline timer */
	bool		owed;			/* some entry's release could not be queued */
	char	   *database;		/* for the key's value (lt_value) */
	char	   *user;
} LtSession;

extern LtSession lt;

/* session.c: the backend's lease, its deadline, telling the session */
extern void lt_session_init(void);
extern bool lt_lease_lost(void);
extern bool lt_lease_ok(void);
extern void lt_forget_lease(StringInfo lost_names);
extern char * lt_held_names(void);
extern void lt_check_lost(void);
extern void lt_ensure_lease(void);
extern char * lt_value(void);

/* locktable.c: the table, its entries' states and releases */
extern const char * lt_prefix(void);
extern void lt_check_prefix(void);
extern void lt_hash_key(char *buf, size_t size, const char *name, EtcdKeyKind kind);
extern void lt_create_table(void);
extern void lt_count_held(LocalLock *e, bool held);
extern void lt_set_state(LocalLock *e, LtState to);
extern void lt_free_entry(LocalLock *e, LtGone why);
extern void lt_push_acq(LocalLock *e, bool xact);
extern void lt_publish(LocalLock *e);
extern void lt_keep_owed(LocalLock *e, int64 rev);
extern bool lt_settle_late(LocalLock *e, EtcdMono since);
extern void lt_flush_owed(void);

#endif
