/*
 * locktable.h
 *		The backend's local lock table: re-entrant counts, session and
 *		transaction scope, subtransaction tracking, the backend's lease, and
 *		the transaction/exit hooks that hand releases to the worker.
 */
#ifndef ETCD_LOCK_LOCKTABLE_H
#define ETCD_LOCK_LOCKTABLE_H

#include "lockops.h"

extern void etcd_locktable_init(void);
extern bool etcd_acquire(const char *name, EtcdKeyKind kind, int permits,
						 const char *value, bool xact, bool wait,
						 int64 timeout_ms, int64 *token);
extern int64 etcd_proclaim(const char *name, const char *value);
extern void etcd_leader_of(const char *name, EtcdLeader *out, bool *mine);
extern void etcd_observe_leader(const char *name, int64 last_revision,
								int64 timeout_ms, EtcdLeader *out, bool *mine);
extern bool etcd_acquire_many(char **names, EtcdKeyKind *kinds, int n,
							  bool xact, bool wait, int64 timeout_ms,
							  int64 *tokens);
extern bool etcd_release(const char *name, EtcdKeyKind kind);
extern void etcd_release_all(void);
extern bool etcd_token(const char *name, EtcdKeyKind kind, int64 *token);

#endif
