/*
 * gateway_int.h
 *		Between the gateway's transport (gateway.c) and its authentication
 *		(auth.c); nothing else includes it.
 */
#ifndef ETCD_LOCK_GATEWAY_INT_H
#define ETCD_LOCK_GATEWAY_INT_H

#include "lib/stringinfo.h"
#include "gateway.h"

extern const EtcdGatewayHooks *gw_hooks;
#define GW_COUNT(ev) do { if (gw_hooks && gw_hooks->count) gw_hooks->count(ev); } while (0)

/* the transport, for auth.c */
extern void gw_init(void);
extern void gw_apply_tls(void);
extern void gw_set_headers(void);
extern bool gw_request(const char *path, const char *body, EtcdParseFn parse,
					   void *arg, EtcdStatus *st, int timeout_ms);
extern bool gw_async_begin(const char *path, const char *body, EtcdParseFn parse,
						   void *arg, int timeout_ms, int tag, EtcdStatus *st);

/* authentication, for gateway.c */
extern const char *gw_auth_token(void);
extern bool gw_auth_ready(EtcdStatus *st, int timeout_ms);
extern bool gw_adopt_shared_token(const char *rejected);
extern bool gw_authenticate(EtcdStatus *st, int timeout_ms);
extern void gw_reject_token(void);
extern void gw_drop_token(void);
extern void gw_auth_async_finish(EtcdAsyncResult *r);

#endif
