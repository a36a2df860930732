/*
 * gateway.h
 *		etcd's JSON gateway over libcurl: requests, failover, JSON helpers.
 *
 * Knows nothing of locks. One kept-alive connection per process (backend or
 * worker); every wait sleeps on the process latch and the socket, so
 * requests are interruptible and bounded by etcd_lock.request_timeout.
 */
#ifndef ETCD_LOCK_GATEWAY_H
#define ETCD_LOCK_GATEWAY_H

#include "lib/stringinfo.h"

#include "compat.h"
#include "utils/timestamp.h"

typedef enum EtcdStatusKind
{
	ETCD_OK = 0,
	ETCD_UNREACHABLE,			/* no endpoint answered in time */
	ETCD_ERROR_REPLY,			/* etcd answered with an error */
	ETCD_BAD_REPLY,				/* the answer was not what etcd sends */
	ETCD_AUTH_PENDING			/* not sent: waits for the authentication in
								 * flight (etcd_gateway_async_auth) */
} EtcdStatusKind;

typedef struct EtcdStatus
{
	EtcdStatusKind kind;
	long		http_status;
	int			grpc_code;		/* gRPC code of an error reply, else 0 */
	char		message[512];	/* etcd's message, or what went wrong */
	char		log_message[512];	/* more detail for the server log only */
} EtcdStatus;

/* gRPC codes etcd uses */
#define GRPC_INVALID_ARGUMENT	3
#define GRPC_NOT_FOUND			5
#define GRPC_PERMISSION_DENIED	7
#define GRPC_FAILED_PRECONDITION	9
#define GRPC_UNAVAILABLE		14
#define GRPC_UNAUTHENTICATED	16

/*
 * A parse callback gets the decoded JSON of a 200 answer and copies what it
 * needs into palloc'd memory. It returns false if the shape is wrong. It
 * must not keep references into the JSON (freed after it returns).
 */
struct json_t;
typedef bool (*EtcdParseFn) (struct json_t *root, void *arg);

extern bool etcd_request(const char *path, const char *body,
						 EtcdParseFn parse, void *arg, EtcdStatus *st);
extern bool etcd_request_ex(const char *path, const char *body,
							EtcdParseFn parse, void *arg, EtcdStatus *st,
							int timeout_ms);
extern void etcd_request_or_error(const char *path, const char *body,
								  EtcdParseFn parse, void *arg,
								  const char *what);
extern ETCD_NORETURN_PREFIX void etcd_report_status(const EtcdStatus *st,
													const char *what) ETCD_NORETURN_ATTR;
extern int	etcd_gateway_wait_kind(int kind);
extern void etcd_gateway_call_deadline(TimestampTz deadline);
extern uint64 etcd_gateway_late_resends(void);
extern void etcd_gateway_count_late_resend(void);
extern void etcd_gateway_follow_endpoint(void);

/*
 * What the gateway tells, and asks of, the rest of the extension without
 * knowing it: a token cache shared by the processes of an instance (one
 * authentication per instance), and counters of what it did.
 */
typedef enum EtcdGwEvent
{
	GW_EV_REQUEST,
	GW_EV_FAILURE,
	GW_EV_FAILOVER,
	GW_EV_AUTHENTICATE
} EtcdGwEvent;

#define ETCD_GW_MAX_TOKEN	2048	/* longest token shared between processes */

typedef struct EtcdGatewayHooks
{
	bool		(*token_get) (const char *user, char *buf, size_t len);
	void		(*token_put) (const char *user, const char *token);
	void		(*count) (int event);
	int			(*endpoint_get) (const char *endpoints);
	void		(*endpoint_put) (const char *endpoints, int idx);
} EtcdGatewayHooks;

extern void etcd_gateway_set_hooks(const EtcdGatewayHooks *hooks);
extern void etcd_gateway_preload(void);
extern bool etcd_gateway_authenticate(EtcdStatus *st);
extern void etcd_gateway_async_auth(void);
extern bool etcd_gateway_recheck_credentials(EtcdStatus *st);
extern bool etcd_gateway_recheck_pending(void);
extern uint32 etcd_gateway_credentials_stamp(void);
extern void etcd_gateway_watch_postmaster(void);
extern bool etcd_gateway_postmaster_died(void);

/* Requests in flight while the caller goes on (the worker). */
/* the tag of an authentication's result (etcd_gateway_async_auth) */
#define ETCD_ASYNC_AUTH_TAG		(-1)

typedef struct EtcdAsyncResult
{
	int			tag;			/* as given to etcd_async_start, or
								 * ETCD_ASYNC_AUTH_TAG */
	bool		ok;				/* a 200 answer the parse callback accepted */
	EtcdStatus	st;
} EtcdAsyncResult;

extern bool etcd_async_start(const char *path, const char *body,
							 EtcdParseFn parse, void *arg, int timeout_ms,
							 int tag, EtcdStatus *st);
extern int	etcd_async_wait(long timeout_ms, EtcdAsyncResult *out, int max);
extern int	etcd_async_inflight(void);
extern int	etcd_endpoint_count(void);

/*
 * The keepalive stream (the worker): renewals of many leases on one
 * streaming request, answered in order.
 */
typedef struct EtcdKaResult
{
	int64		lease_id;
	int64		ttl;			/* 0: the lease no longer exists */
} EtcdKaResult;

extern bool etcd_ka_stream_open(EtcdStatus *st);
extern bool etcd_ka_stream_usable(void);
extern bool etcd_ka_stream_active(void);
extern bool etcd_ka_stream_send(int64 lease_id);
extern int	etcd_ka_stream_results(EtcdKaResult *out, int max);
extern void etcd_ka_stream_close(bool failed);

/* Watching one key for its deletion (a streaming /v3/watch request). */
typedef enum EtcdWatchResult
{
	WATCH_DELETED,				/* a DELETE event arrived */
	WATCH_TIMEOUT,				/* the deadline passed */
	WATCH_BROKEN				/* stream ended, canceled or failed: re-read */
} EtcdWatchResult;

extern bool etcd_watch_open(const char *key, int keylen, int64 created,
							EtcdStatus *st);
extern bool etcd_watch_open_ex(const char *key, int keylen, bool whole_prefix,
							   int64 min_rev, bool any_change, EtcdStatus *st);
extern void etcd_watch_rearm(int64 min_rev);
extern bool etcd_watch_saw_delete(const char *key, int keylen);
extern EtcdWatchResult etcd_watch_wait(TimestampTz deadline);
extern void etcd_watch_close(void);

/* JSON and encoding helpers */
extern void etcd_append_b64(StringInfo buf, const char *data, int len);
extern char *etcd_b64_decode(const char *src, int *outlen);
extern bool etcd_json_int64(struct json_t *obj, const char *field, int64 *out);
extern const char *etcd_current_endpoint(void);
extern bool etcd_endpoints_ok(char *errbuf, size_t errlen);

#endif
