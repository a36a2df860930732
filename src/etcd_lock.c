/*
 * etcd_lock.c
 *		Module entry point: GUCs, shared memory, the worker, the hooks.
 *
 * Everything but the GUCs needs shared_preload_libraries; loaded any other
 * way (CREATE EXTENSION without preload), the SQL functions refuse to run
 * with a hint, instead of half working.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "compat.h"
#include "etcd_lock.h"
#include "gateway.h"
#include "guc.h"
#include "locktable.h"
#include "shmem.h"
#include "worker.h"

PG_MODULE_MAGIC;

bool		etcd_lock_preloaded = false;

/* the gateway's token cache and counters live in shared memory */
static const EtcdGatewayHooks gateway_hooks = {
	etcd_shared_token_get,
	etcd_shared_token_put,
	etcd_shared_count,
	etcd_shared_endpoint_get,
	etcd_shared_endpoint_put
};

void		_PG_init(void);

/*
 * etcd_wait_event returns the wait event to report for kind: a named one
 * (registered on first use in each process) where PostgreSQL has custom
 * wait events, else PG_WAIT_EXTENSION.
 */
uint32
etcd_wait_event(EtcdWaitKind kind)
{
#ifdef ETCD_HAVE_CUSTOM_WAIT_EVENTS
	static uint32 events[ETCD_NUM_WAIT_KINDS];
	static const char *const names[ETCD_NUM_WAIT_KINDS] = {
		"EtcdLockRequest",
		"EtcdLockAcquire",
		"EtcdLockPredecessor",
		"EtcdLockOwnRelease"
	};

	if (kind < 0 || kind >= ETCD_NUM_WAIT_KINDS)
		return PG_WAIT_EXTENSION;
	if (events[kind] == 0)
		events[kind] = WaitEventExtensionNew(names[kind]);
	return events[kind];
#else
	return PG_WAIT_EXTENSION;
#endif
}

void
_PG_init(void)
{
	etcd_lock_define_gucs();
	if (!process_shared_preload_libraries_in_progress)
		return;
	etcd_lock_preloaded = true;
	etcd_shmem_install_hooks();
	etcd_gateway_set_hooks(&gateway_hooks);
	etcd_gateway_preload();
	etcd_lock_register_worker();
	etcd_locktable_init();
}
