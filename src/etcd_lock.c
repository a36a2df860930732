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
	etcd_shared_count
};

void		_PG_init(void);

void
_PG_init(void)
{
	etcd_lock_define_gucs();
	if (!process_shared_preload_libraries_in_progress)
		return;
	etcd_lock_preloaded = true;
	etcd_shmem_install_hooks();
	etcd_gateway_set_hooks(&gateway_hooks);
	etcd_lock_register_worker();
	etcd_locktable_init();
}
