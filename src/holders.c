/*
 * holders.c
 *		The etcd_lock_holders report: every lock key of a name and of the
 *		names nested under it, one entry per holder with its waiters and
 *		the holder lease's TTL.
 *
 * May call: keys.h (listing, the blocking rule), gateway.h. Called by the
 * SQL function (functions.c).
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "guc.h"
#include "utils/wait_event.h"

#include <jansson.h>

#include "gateway.h"
#include "lockops.h"
#include "keys.h"

/* ---- listing holders ---- */

static bool
parse_ttl(json_t *root, void *arg)
{
	return etcd_json_int64(root, "TTL", (int64 *) arg);
}

/*
 * holders_match: name is the name asked for (arg), or nested under it
 * (arg/...), or arg ends with '/' and name is under it; '' is every name.
 * Whole path components: '/sw' is not '/swx'.
 */
static bool
holders_match(const char *name, const char *arg)
{
	size_t		alen = strlen(arg);

	if (alen == 0)
		return true;
	if (strncmp(name, arg, alen) != 0)
		return false;
	return arg[alen - 1] == '/' || name[alen] == '\0' || name[alen] == '/';
}

/*
 * etcd_lock_holders reads every lock key of the name name_prefix and of the
 * names nested under it (holders_match; under etcd_lock.prefix) and returns one entry per holder (ek_kinds_block;
 * a shared lock or a semaphore has several): its key's token, lease and
 * value, its name's number of keys that do not hold, and the lease's
 * remaining TTL. One range read plus one lease lookup per distinct lease.
 */
EtcdHolder *
etcd_lock_holders(const char *prefix, const char *name_prefix, int *nholders)
{
	ListedKeys	r = {0};
	StringInfoData b;
	char	   *start = psprintf("%s%s", prefix ? prefix : "", name_prefix);
	EtcdHolder *items;
	int			i,
				out = 0;

	r.prefix = prefix ? prefix : "";
	r.prefixlen = strlen(r.prefix);
	initStringInfo(&b);
	appendStringInfoChar(&b, '{');
	ek_append_prefix_range(&b, start, strlen(start));

	/*
	 * A report, never an ownership decision: a serializable read (served
	 * by the member asked, without a quorum round) is enough.
	 */
	appendStringInfoString(&b, ",\"serializable\":true}");
	etcd_request_or_error("/v3/kv/range", b.data, ek_parse_listed, &r, "list locks");

	if (r.n > 1)
		qsort(r.keys, r.n, sizeof(ListedKey), ek_listed_cmp);
	items = palloc(sizeof(EtcdHolder) * Max(r.n, 1));

	/*
	 * Keep the keys that hold (the oldest, every shared key with no older
	 * exclusive key of another lease, the first N permit keys); count the
	 * rest of their name as its waiters.
	 */
	for (i = 0; i < r.n;)
	{
		int			end = i,
					j,
					nsem = 0,
					nwait = 0,
					first = out;

		while (end < r.n && strcmp(r.keys[end].name, r.keys[i].name) == 0)
			end++;
		if (!holders_match(r.keys[i].name, name_prefix))
		{
			i = end;
			continue;
		}
		for (j = i; j < end; j++)
		{
			ListedKey  *h = &r.keys[j];
			bool		holds = true;
			int			m;

			if (h->kind == ETCD_KEY_SEMAPHORE)
				holds = nsem++ < h->permits;
			else
				for (m = i; m < j && holds; m++)
					if (r.keys[m].lease != h->lease && ek_kinds_block(h->kind, r.keys[m].kind))
						holds = false;
			if (!holds)
			{
				nwait++;
				continue;
			}
			items[out].name = h->name;
			items[out].token = h->rev;
			items[out].lease_id = h->lease;
			items[out].value = h->value;
			items[out].ttl = -1;
			items[out].kind = h->kind;
			items[out].permits = h->permits;
			out++;
		}
		for (j = first; j < out; j++)
			items[j].waiters = nwait;
		i = end;
	}
	for (i = 0; i < out; i++)
	{
		char		body[64];
		int64		ttl = -1;
		int			j;

		/* a lease holding several names is looked up once */
		for (j = 0; j < i && items[j].lease_id != items[i].lease_id; j++)
			;
		if (j < i)
		{
			items[i].ttl = items[j].ttl;
			continue;
		}
		snprintf(body, sizeof(body), "{\"ID\":\"" INT64_FORMAT "\"}", items[i].lease_id);
		etcd_request_or_error("/v3/lease/timetolive", body, parse_ttl, &ttl,
							  "read a lease");
		items[i].ttl = ttl;
	}
	*nholders = out;
	return items;
}
