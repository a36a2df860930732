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
 *
 * Two more floors, for the contend and distinct workloads:
 *
 *   gateway_shapes handoff ENDPOINT N KEY
 *     the least a handoff can cost through the gateway: a watcher on KEY is
 *     created beforehand (one streamed POST /v3/watch, kept open); each round
 *     puts KEY, waits for that event, then times a delete of KEY until its
 *     DELETE event arrives at the watcher.
 *     Prints: handoff n=N p50_us=.. p99_us=..
 *
 *   gateway_shapes distinct ENDPOINT SECONDS C PREFIX
 *     C processes, each with its own kept-alive connection and its own key
 *     PREFIX/i, loop the plain floor pair (put-if-absent txn + delete, as
 *     ../shared/reference/http-floor does) for SECONDS.
 *     Prints: distinct c=C ops_per_s=.. p50_us=..
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

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

static int
shapes_main(int argc, char **argv)
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
	const char *variant;
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

	/*
	 * SHAPES_VARIANT measures candidate shapes against the extension's
	 * (bench/shape_candidates.sh): release_plain (a delete without the
	 * compare: NOT safe to resend, a reference only), no_failure (the
	 * acquire without its failure branch: a resent acquire could not tell
	 * its own key), with_values (the oldest-key read returning the value).
	 */
	variant = getenv("SHAPES_VARIANT") ? getenv("SHAPES_VARIANT") : "";
	if (strcmp(variant, "with_values") == 0)
		snprintf(range, sizeof(range),
				 "{\"request_range\":{\"key\":\"%s\",\"range_end\":\"%s\",\"sort_order\":\"ASCEND\","
				 "\"sort_target\":\"CREATE\",\"limit\":\"1\"}}", p64, e64);
	for (i = 0; i < n; i++)
	{
		double		t0 = now_us(),
					t1;
		long long	rev;

		if (strcmp(variant, "no_failure") == 0)
			snprintf(body, sizeof(body),
					 "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}],"
					 "\"success\":[{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\",\"lease\":\"%lld\"}},%s]}",
					 k64, k64, val64, lease, range);
		else
			snprintf(body, sizeof(body),
					 "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}],"
					 "\"success\":[{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\",\"lease\":\"%lld\"}},%s],"
					 "\"failure\":[{\"request_range\":{\"key\":\"%s\",\"keys_only\":true}},%s]}",
					 k64, k64, val64, lease, range, k64, range);
		post("/v3/kv/txn", body);
		rev = json_ll("revision");
		t1 = now_us();
		if (strcmp(variant, "release_plain") == 0)
		{
			snprintf(body, sizeof(body), "{\"key\":\"%s\"}", k64);
			post("/v3/kv/deleterange", body);
		}
		else
		{
			snprintf(body, sizeof(body),
					 "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"%lld\"}],"
					 "\"success\":[{\"request_delete_range\":{\"key\":\"%s\"}}]}", k64, rev, k64);
			post("/v3/kv/txn", body);
		}
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

/* ---- handoff floor ---- */

static char wbuf[1 << 20];
static size_t wlen;

static size_t
wsink(char *p, size_t s, size_t n, void *u)
{
	size_t		k = s * n;

	(void) u;
	if (wlen + k < sizeof(wbuf) - 1)
	{
		memcpy(wbuf + wlen, p, k);
		wlen += k;
		wbuf[wlen] = '\0';
	}
	return k;
}

/* drive the multi handle until wbuf contains needle (10 s at most) */
static void
drive_until(CURLM *m, const char *needle)
{
	double		give_up = now_us() + 10e6;
	int			running;

	for (;;)
	{
		curl_multi_perform(m, &running);
		if (strstr(wbuf, needle))
			return;
		if (now_us() > give_up)
		{
			fprintf(stderr, "gateway_shapes: no \"%s\" from the watch: %s\n", needle, wbuf);
			exit(1);
		}
		curl_multi_poll(m, NULL, 0, 100, NULL);
	}
}

static int
handoff_main(int argc, char **argv)
{
	int			n = atoi(argv[3]),
				i,
				running;
	char		k64[1024],
				body[2048],
				url[512],
				want[64];
	double	   *lat;
	CURLM	   *m = curl_multi_init();
	CURL	   *w = curl_easy_init(),
			   *d = curl_easy_init();
	struct curl_slist *h = NULL;

	ep = argv[2];
	if (n < 1 || n > 1000000)
		return 2;
	lat = malloc(sizeof(double) * n);
	b64(argv[4], strlen(argv[4]), k64);
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Expect:");

	c = curl_easy_init();		/* puts, blocking */
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);

	/* the watcher: one stream, created before any round */
	snprintf(url, sizeof(url), "%s/v3/watch", ep);
	snprintf(body, sizeof(body), "{\"create_request\":{\"key\":\"%s\"}}", k64);
	curl_easy_setopt(w, CURLOPT_URL, url);
	curl_easy_setopt(w, CURLOPT_COPYPOSTFIELDS, body);
	curl_easy_setopt(w, CURLOPT_WRITEFUNCTION, wsink);
	curl_easy_setopt(w, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(w, CURLOPT_HTTPHEADER, h);
	curl_multi_add_handle(m, w);
	drive_until(m, "\"created\":true");

	/* the deleter, on its own kept-alive connection */
	snprintf(url, sizeof(url), "%s/v3/kv/deleterange", ep);
	snprintf(body, sizeof(body), "{\"key\":\"%s\"}", k64);
	curl_easy_setopt(d, CURLOPT_URL, url);
	curl_easy_setopt(d, CURLOPT_COPYPOSTFIELDS, body);
	curl_easy_setopt(d, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(d, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(d, CURLOPT_HTTPHEADER, h);

	for (i = 0; i < n; i++)
	{
		double		t0;
		long long	rev;
		CURLMsg    *msg;
		int			left;

		snprintf(body, sizeof(body), "{\"key\":\"%s\",\"value\":\"\"}", k64);
		post("/v3/kv/put", body);
		rev = json_ll("revision");
		snprintf(want, sizeof(want), "\"mod_revision\":\"%lld\"", rev);
		drive_until(m, want);
		wlen = 0;
		wbuf[0] = '\0';

		t0 = now_us();
		curl_multi_add_handle(m, d);
		drive_until(m, "DELETE");
		lat[i] = now_us() - t0;
		wlen = 0;
		wbuf[0] = '\0';
		/* let the delete's own answer finish before the next round */
		for (running = 1; running;)
		{
			curl_multi_perform(m, &running);
			while ((msg = curl_multi_info_read(m, &left)) != NULL)
				if (msg->easy_handle == d)
					running = 0;
			if (running)
				curl_multi_poll(m, NULL, 0, 100, NULL);
		}
		curl_multi_remove_handle(m, d);
	}
	qsort(lat, n, sizeof(double), cmp);
	printf("handoff n=%d p50_us=%.0f p99_us=%.0f\n", n, lat[n / 2], lat[n * 99 / 100]);
	return 0;
}

/* ---- distinct floor ---- */

static int
distinct_main(int argc, char **argv)
{
	double		secs = atof(argv[3]);
	int			cn = atoi(argv[4]),
				i,
				fds[2];
	long		total = 0;
	double		p50sum = 0;

	ep = argv[2];
	if (cn < 1 || cn > 1024 || secs <= 0 || pipe(fds) != 0)
		return 2;
	for (i = 0; i < cn; i++)
	{
		pid_t		pid = fork();

		if (pid < 0)
			return 1;
		if (pid == 0)
		{
			char		key[600],
						k64[1024],
						body[4096],
						line[128];
			struct curl_slist *h = NULL;
			double		end,
					   *lat;
			long		cnt = 0,
						cap = 1 << 20;

			close(fds[0]);
			lat = malloc(sizeof(double) * cap);
			snprintf(key, sizeof(key), "%s/%d", argv[5], i);
			b64(key, strlen(key), k64);
			c = curl_easy_init();
			curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
			curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
			h = curl_slist_append(h, "Content-Type: application/json");
			h = curl_slist_append(h, "Expect:");
			curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
			end = now_us() + secs * 1e6;
			while (now_us() < end && cnt < cap)
			{
				double		t0 = now_us();

				snprintf(body, sizeof(body),
						 "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}],"
						 "\"success\":[{\"request_put\":{\"key\":\"%s\",\"value\":\"\"}}]}", k64, k64);
				post("/v3/kv/txn", body);
				snprintf(body, sizeof(body), "{\"key\":\"%s\"}", k64);
				post("/v3/kv/deleterange", body);
				lat[cnt++] = now_us() - t0;
			}
			qsort(lat, cnt, sizeof(double), cmp);
			snprintf(line, sizeof(line), "%ld %.0f\n", cnt, cnt ? lat[cnt / 2] : 0.0);
			if (write(fds[1], line, strlen(line)) < 0)
				_exit(1);
			_exit(0);
		}
	}
	close(fds[1]);
	{
		FILE	   *f = fdopen(fds[0], "r");
		long		k;
		double		p;
		int			got = 0;

		while (f && fscanf(f, "%ld %lf", &k, &p) == 2)
		{
			total += k;
			p50sum += p;
			got++;
		}
		while (wait(NULL) > 0)
			;
		if (got != cn)
		{
			fprintf(stderr, "gateway_shapes: %d of %d distinct clients reported\n", got, cn);
			return 1;
		}
	}
	printf("distinct c=%d ops_per_s=%.0f p50_us=%.0f\n", cn, total / secs, p50sum / cn);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc >= 5 && strcmp(argv[1], "handoff") == 0)
		return handoff_main(argc, argv);
	if (argc >= 6 && strcmp(argv[1], "distinct") == 0)
		return distinct_main(argc, argv);
	return shapes_main(argc, argv);
}
