/*
 * compat.h
 *		Every PostgreSQL-version difference etcd_lock builds around, in one
 *		place: PostgreSQL 15, 16, 17 and 18 from the same sources. Each guard
 *		names the release that changed the API.
 */
#ifndef ETCD_LOCK_COMPAT_H
#define ETCD_LOCK_COMPAT_H

#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

/*
 * 18 replaced pg_attribute_noreturn(), written before the declaration, with
 * pg_noreturn (C11 _Noreturn), written before the return type; 15-17 have
 * only the former.
 */
#if PG_VERSION_NUM >= 180000
#define ETCD_NORETURN_PREFIX pg_noreturn
#define ETCD_NORETURN_ATTR
#else
#define ETCD_NORETURN_PREFIX
#define ETCD_NORETURN_ATTR pg_attribute_noreturn()
#endif

/*
 * 17 replaced BackendId (1-based, MyBackendId) with ProcNumber (0-based,
 * MyProcNumber). A regular backend or background worker's number is below
 * MaxBackends either way; etcd_lock indexes its lease slots with it.
 */
#if PG_VERSION_NUM >= 170000
#include "storage/procnumber.h"
#define ETCD_MY_SLOT_INDEX()	((int) MyProcNumber)
#else
#include "storage/backendid.h"
#define ETCD_MY_SLOT_INDEX()	((int) MyBackendId - 1)
#endif

/*
 * 17 made CreateWaitEventSet take a ResourceOwner instead of a memory
 * context (the set always lives in TopMemoryContext). etcd_lock frees its
 * sets itself on every path, so it registers them with no owner.
 */
#if PG_VERSION_NUM >= 170000
#define etcd_create_wait_event_set(nevents) CreateWaitEventSet(NULL, (nevents))
#else
#define etcd_create_wait_event_set(nevents) CreateWaitEventSet(TopMemoryContext, (nevents))
#endif

/*
 * 17 added custom wait events (WaitEventExtensionNew): a waiting session
 * shows what it waits for in pg_stat_activity.wait_event instead of the
 * anonymous "Extension". On 15 and 16 every kind is PG_WAIT_EXTENSION.
 */
#if PG_VERSION_NUM >= 170000
#define ETCD_HAVE_CUSTOM_WAIT_EVENTS 1
#endif

/*
 * 18 made the binary side of pg_b64_encode/pg_b64_decode uint8 instead of
 * char.
 */
#if PG_VERSION_NUM >= 180000
typedef uint8 etcd_b64_byte;
#else
typedef char etcd_b64_byte;
#endif

/*
 * 17 gave makeJsonLexContextCstringLen a first argument: a context to fill
 * in, or NULL to allocate one.
 */
#if PG_VERSION_NUM >= 170000
#define etcd_json_lex(json, len, enc) \
	makeJsonLexContextCstringLen(NULL, (json), (len), (enc), false)
#else
#define etcd_json_lex(json, len, enc) \
	makeJsonLexContextCstringLen((json), (len), (enc), false)
#endif

/* What a session (or the worker) waits for; see etcd_wait_event(). */
typedef enum EtcdWaitKind
{
	ETCD_WAIT_REQUEST,			/* EtcdLockRequest: an etcd request */
	ETCD_WAIT_ACQUIRE,			/* EtcdLockAcquire: the acquire request */
	ETCD_WAIT_PREDECESSOR,		/* EtcdLockPredecessor: queued behind another holder */
	ETCD_WAIT_OWN_RELEASE,		/* EtcdLockOwnRelease: an earlier release of the
								 * same lock by this session, in the worker's hands */
	ETCD_NUM_WAIT_KINDS
} EtcdWaitKind;

extern uint32 etcd_wait_event(EtcdWaitKind kind);

#endif							/* ETCD_LOCK_COMPAT_H */
