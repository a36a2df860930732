/*
 * gateway_shapes.c — diagnostic for the "pair" workload: sends the same two
 * etcd gateway requests one etcd_lock()/etcd_unlock() pair sends (see
 * src/lockops.c: the acquire txn "put our key with our lease if absent +
 * range the oldest key", and the release txn "delete our key if its
 * create_revision is still our token"), with the same kind of value, over one
 * kept-alive blocking libcurl connection, without PostgreSQL.
 *
 * With the pair results it splits the extension's pair latency into
 *   SQL round trips (pg_advisory_lock pair)
 * + etcd's cost for these request shapes (this program)
 * + the extension's own client-side work (the rest).
 *
 * Usage: gateway_shapes http://127.0.0.1:PORT N LOCKNAME
 * Prints: shapes n=N pair_p50_us=.. pair_p99_us=.. acquire_p50_us=..
 *         release_p50_us=.. ops_per_s=..
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char resp[65536];
static size_t rlen;

static size_t
sink(char *p, size_t s, size_t n, void *u)
{
	size_t		k = s * n;

	(void) u;
	if (rlen + k < sizeof(resp) - 1)
	{
		memcpy(resp + rlen, p, k);
		rlen += k;
		resp[rlen] = '\0';
	}
	return k;
}

static double
now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int
cmp(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return x < y ? -1 : x > y;
}

static CURL *c;
static const char *ep;

static void
post(const char *path, const char *body)
{
	char		url[512];
	long		code = 0;

	snprintf(url, sizeof(url), "%s%s", ep, path);
	rlen = 0;
	resp[0] = '\0';
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long) strlen(body));
	if (curl_easy_perform(c) != CURLE_OK)
	{
		fprintf(stderr, "gateway_shapes: request to %s failed\n", url);
		exit(1);
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	if (code != 200)
	{
		fprintf(stderr, "gateway_shapes: %s answered %ld: %s\n", url, code, resp);
		exit(1);
	}
}

static void
b64(const char *in, size_t len, char *out)
{
	static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t		i,
				o = 0;

	for (i = 0; i < len; i += 3)
	{
		unsigned	v = (unsigned char) in[i] << 16 |
			(i + 1 < len ? (unsigned char) in[i + 1] << 8 : 0) |
			(i + 2 < len ? (unsigned char) in[i + 2] : 0);

		out[o++] = t[v >> 18 & 63];
		out[o++] = t[v >> 12 & 63];
		out[o++] = i + 1 < len ? t[v >> 6 & 63] : '=';
		out[o++] = i + 2 < len ? t[v & 63] : '=';
	}
	out[o] = '\0';
}

/* the base64 of the end of the range of keys starting with pfx */
static void
range_end_b64(const char *pfx, char *out)
{
	char		end[1024];
	size_t		n = strlen(pfx);

	memcpy(end, pfx, n);
	end[n - 1]++;				/* pfx ends with '/', never 0xff */
	b64(end, n, out);
}

static long long
json_ll(const char *field)
{
	char		pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":\"", field);
	p = strstr(resp, pat);
	if (!p)
	{
		fprintf(stderr, "gateway_shapes: no %s in %s\n", field, resp);
		exit(1);
	}
	return atoll(p + strlen(pat));
}

int
main(int argc, char **argv)
{
	int			n,
				i;
	const char *name;
	char		pfx[512],
				key[600],
				k64[1024],
				p64[1024],
				e64[1024],
				val64[1024],
				body[16384],
				range[4096];
	char		value[512];
	long long	lease;
	double	   *pair,
			   *acq,
			   *rel,
				sum = 0;
	struct curl_slist *h = NULL;

	if (argc < 4)
	{
		fprintf(stderr, "usage: gateway_shapes ENDPOINT N LOCKNAME\n");
		return 2;
	}
	ep = argv[1];
	n = atoi(argv[2]);
	name = argv[3];
	if (n < 1 || n > 10000000)
		return 2;
	pair = malloc(sizeof(double) * n);
	acq = malloc(sizeof(double) * n);
	rel = malloc(sizeof(double) * n);

	c = curl_easy_init();
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Expect:");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);

	post("/v3/lease/grant", "{\"TTL\":\"60\"}");
	lease = json_ll("ID");

	snprintf(pfx, sizeof(pfx), "%s/", name);
	snprintf(key, sizeof(key), "%s%llx", pfx, lease);
	b64(key, strlen(key), k64);
	b64(pfx, strlen(pfx), p64);
	range_end_b64(pfx, e64);
	/* a value like the extension's (who holds the lock, as JSON) */
	snprintf(value, sizeof(value),
			 "{\"instance\":\"7712591972242911405\",\"host\":\"vm\",\"port\":5432,\"pid\":%d,"
			 "\"database\":\"postgres\",\"user\":\"postgres\",\"application_name\":\"pgbench\","
			 "\"acquired_at\":\"2026-01-01 00:00:00.000000+00\"}", 12345);
	b64(value, strlen(value), val64);
	snprintf(range, sizeof(range),
			 "{\"request_range\":{\"key\":\"%s\",\"range_end\":\"%s\",\"sort_order\":\"ASCEND\","
			 "\"sort_target\":\"CREATE\",\"limit\":\"1\",\"keys_only\":true}}", p64, e64);

	for (i = 0; i < n; i++)
	{
		double		t0 = now_us(),
					t1;
		long long	rev;

		snprintf(body, sizeof(body),
				 "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}],"
				 "\"success\":[{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\",\"lease\":\"%lld\"}},%s],"
				 "\"failure\":[{\"request_range\":{\"key\":\"%s\",\"keys_only\":true}},%s]}",
				 k64, k64, val64, lease, range, k64, range);
		post("/v3/kv/txn", body);
		rev = json_ll("revision");
		t1 = now_us();
		snprintf(body, sizeof(body),
				 "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"%lld\"}],"
				 "\"success\":[{\"request_delete_range\":{\"key\":\"%s\"}}]}", k64, rev, k64);
		post("/v3/kv/txn", body);
		if (!strstr(resp, "\"deleted\":\"1\""))
		{
			fprintf(stderr, "gateway_shapes: release deleted nothing: %s\n", resp);
			return 1;
		}
		pair[i] = now_us() - t0;
		acq[i] = t1 - t0;
		rel[i] = pair[i] - acq[i];
		sum += pair[i];
	}
	snprintf(body, sizeof(body), "{\"ID\":\"%lld\"}", lease);
	post("/v3/lease/revoke", body);

	qsort(pair, n, sizeof(double), cmp);
	qsort(acq, n, sizeof(double), cmp);
	qsort(rel, n, sizeof(double), cmp);
	printf("shapes n=%d pair_p50_us=%.0f pair_p99_us=%.0f acquire_p50_us=%.0f release_p50_us=%.0f ops_per_s=%.0f\n",
		   n, pair[n / 2], pair[n * 99 / 100], acq[n / 2], rel[n / 2], n / (sum / 1e6));
	curl_easy_cleanup(c);
	curl_slist_free_all(h);
	return 0;
}
