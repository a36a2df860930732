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
						 bool xact, bool wait, int64 timeout_ms, int64 *token);
extern bool etcd_acquire_many(char **names, EtcdKeyKind *kinds, int n,
							  bool xact, bool wait, int64 timeout_ms,
							  int64 *tokens);
extern bool etcd_release(const char *name, EtcdKeyKind kind);
extern void etcd_release_all(void);
extern bool etcd_token(const char *name, EtcdKeyKind kind, int64 *token);

#endif
