/*
 * guc.h
 *		Configuration parameters of etcd_lock (all under "etcd_lock.").
 */
#ifndef ETCD_LOCK_GUC_H
#define ETCD_LOCK_GUC_H

#define ETCD_MAX_NAME		1024	/* longest lock name, in bytes */
#define ETCD_MAX_PREFIX		256		/* longest etcd_lock.prefix, in bytes */
/*
 * the longest mode marker after the lease hex: ".sem" + up to 4 digits
 * (".shared" is 7); the local table's ".election" suffix replaces the hex
 */
#define ETCD_MAX_MARKER		8
/* prefix + name + "/" + 16 hex digits + marker + NUL: the longest key */
#define ETCD_MAX_KEY		(ETCD_MAX_PREFIX + ETCD_MAX_NAME + 1 + 16 + ETCD_MAX_MARKER + 1)
#define ETCD_MAX_ENDPOINTS	16

extern char *etcd_lock_endpoints;
extern char *etcd_lock_prefix;
extern int	etcd_lock_lease_ttl;
extern int	etcd_lock_request_timeout;
extern int	etcd_lock_on_lease_loss;
extern char *etcd_lock_tls_ca_file;
extern char *etcd_lock_tls_cert_file;
extern char *etcd_lock_tls_key_file;
extern char *etcd_lock_username;
extern char *etcd_lock_password_file;
extern bool etcd_lock_verify_on_commit;
extern bool etcd_lock_group_commit;
extern int	etcd_lock_group_commit_inflight;
extern int	etcd_lock_release_wait;
extern bool etcd_lock_allow_session_locks;
extern int	etcd_lock_max_locks;
extern int	etcd_lock_deadlock_max_keys;

typedef enum EtcdOnLeaseLoss
{
	ON_LOSS_CANCEL,				/* cancel the holder's running statement */
	ON_LOSS_TERMINATE,			/* end the holder's session */
	ON_LOSS_WARN				/* WARNING at its next statement */
} EtcdOnLeaseLoss;

extern void etcd_lock_define_gucs(void);
extern int	etcd_lock_parse_endpoints(const char *list, char **out, int max,
									  char *errbuf, size_t errlen);

#endif
