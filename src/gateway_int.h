/*
 * gateway_int.h
 *		Inside the gateway: its transport (transport.c), requests and
 *		failover (gateway.c), line streams (streams.c) and authentication
 *		(auth.c). Nothing outside these four includes it.
 *
 * Layers, each calling only the ones below it:
 *   auth.c      the token (calls gateway.c's requests)
 *   streams.c   the watch and the keepalive stream: two GwStreams
 *   gateway.c   endpoints and failover, one request at a time (GwTransfer
 *               gw_req) or many in flight (GwAsync), error answers
 *   transport.c the process's curl multi handle, its sockets and waits,
 *               every GwTransfer's handle, header lists and TLS
 */
#ifndef ETCD_LOCK_GATEWAY_INT_H
#define ETCD_LOCK_GATEWAY_INT_H

#include <curl/curl.h>

#include "lib/stringinfo.h"
#include "gateway.h"

#define GW_ASYNC_MAX		32	/* requests in flight at once (the worker) */
#define GW_MAX_BODY			(16 * 1024 * 1024)	/* largest answer accepted */
#define GW_MAX_WATCH_LINE	(4 * 1024 * 1024)

extern const EtcdGatewayHooks *gw_hooks;
#define GW_COUNT(ev) do { if (gw_hooks && gw_hooks->count) gw_hooks->count(ev); } while (0)

/* a malloc'd byte buffer (filled in curl callbacks: never ereports) */
typedef struct GwBuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
	bool		overflow;
} GwBuf;

extern bool gw_buf_append(GwBuf *b, const char *p, size_t n, size_t limit);
extern void gw_buf_reset(GwBuf *b);

/* which header list a transfer sends (gw_set_headers keeps them current) */
typedef enum GwHeaders
{
	GW_HDR_REQUEST,				/* requests: JSON, no Expect, hasleader, token */
	GW_HDR_WATCH,				/* the watch stream: the same, its own list */
	GW_HDR_OWN					/* the transfer sets its own (keepalive stream) */
} GwHeaders;

/*
 * GwTransfer: one HTTP request on the process's multi handle, of any kind
 * (the synchronous request, each of the worker's requests in flight, each
 * stream). Its handle is made once and reused; its answer goes to body
 * (requests: the whole answer; streams: the bytes of a line not yet
 * complete). active: in the multi handle; done/result: the transfer ended.
 */
typedef struct GwTransfer
{
	CURL	   *easy;
	GwHeaders	headers;
	bool		active;
	bool		done;
	CURLcode	result;
	bool		upload_paused;	/* nothing to send: don't wait for POLLOUT */
	GwBuf		body;
	char		errbuf[CURL_ERROR_SIZE];
} GwTransfer;

/* transport.c */
extern void gw_init(void);
extern void gw_transfer_init(GwTransfer *t, GwHeaders headers,
							 curl_write_callback write, void *writedata);
extern void gw_transfer_start(GwTransfer *t);
extern void gw_transfer_stop(GwTransfer *t);
extern bool gw_drive(bool (*cond) (void), TimestampTz deadline);
extern void gw_pause(long ms);
extern int	gw_wait_latch(long ms);
extern bool gw_latch_seen(bool reset);
extern TimestampTz gw_bound(TimestampTz deadline);
extern void gw_apply_tls(void);
extern void gw_tls_setup(CURL *h);
extern void gw_set_headers(void);
extern struct curl_slist *gw_request_headers(void);

/* gateway.c: endpoints and failover */
extern int	gw_endpoints(void);
extern int	gw_ep_current(void);
extern const char *gw_ep_url(int idx);
extern void gw_ep_answered(int idx);
extern void gw_ep_advance(void);

/* gateway.c: requests */
extern bool gw_request(const char *path, const char *body, EtcdParseFn parse,
					   void *arg, EtcdStatus *st, int timeout_ms);
extern bool gw_async_begin(const char *path, const char *body, EtcdParseFn parse,
						   void *arg, int timeout_ms, int tag, EtcdStatus *st);
extern size_t gw_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata);

/* streams.c: what the worker's wait for requests in flight also wakes on */
extern bool gw_ka_has_news(void);

/* auth.c */
extern const char *gw_auth_token(void);
extern bool gw_auth_ready(EtcdStatus *st, int timeout_ms);
extern bool gw_adopt_shared_token(const char *rejected);
extern bool gw_authenticate(EtcdStatus *st, int timeout_ms);
extern void gw_reject_token(void);
extern void gw_drop_token(void);
extern void gw_auth_async_finish(EtcdAsyncResult *r);

#endif
