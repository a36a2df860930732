/*
 * worker.h
 *		The etcd_lock background worker: keepalives and queued releases.
 */
#ifndef ETCD_LOCK_WORKER_H
#define ETCD_LOCK_WORKER_H

extern void etcd_lock_register_worker(void);
extern PGDLLEXPORT void etcd_lock_worker_main(Datum arg);

#endif
