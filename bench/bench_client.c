/*
 * bench_client.c — libpq driver for the etcd_lock benchmark workloads that
 * pgbench cannot express (see bench/README.md). Connection parameters come
 * from the usual PG* environment variables (PGHOST, PGPORT, PGUSER,
 * PGDATABASE).
 *
 *   contend -c C -T SECS -lock NAME -out FILE
 *       C sessions take turns on one lock for SECS seconds. Each session
 *       records, per acquisition, CLOCK_REALTIME (ns) before the lock call,
 *       right after it returns, right before the unlock call and after it
 *       returns. FILE gets one line per acquisition:
 *       "session t_call t_acquired t_release t_released".
 *   hold -n N -idle M -lock PREFIX -pidfile FILE -max-secs S
 *       N sessions each take lock PREFIX/i and stay idle holding it; M
 *       sessions call etcd_lock_token() once (extension loaded, never
 *       locked). Writes "H pid" / "I pid" lines to FILE, prints "ready",
 *       then waits until stdin reaches EOF (or S seconds), disconnects,
 *       prints "done".
 *   abort -iters K -locks L -lock PREFIX [-etcd-pid PID | -refuse-endpoint URL] -out FILE
 *       K times: BEGIN; L x etcd_xact_lock(PREFIX/k/j); [SIGSTOP etcd];
 *       time ROLLBACK; [SIGCONT etcd]. FILE gets the ROLLBACK latencies in
 *       microseconds. Also times a ROLLBACK of a transaction without etcd
 *       locks ("base" lines) for comparison.
 *   first -n N -lock NAME -out FILE
 *       N times: connect, time the session's first etcd_lock(NAME) (it
 *       needs a lease), unlock, time a second etcd_lock(NAME) (warm), unlock,
 *       disconnect. FILE gets "first_us warm_us" per session.
 *   leak -n N -warmup W -lock NAME -out FILE
 *       One session: W warm-up cycles, then N x (etcd_lock; etcd_unlock),
 *       reading its backend's /proc status at 0%, 25%, 50%, 75%, 100%.
 *
 * Every loop is bounded in count and time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#define MAX_EVENTS_PER_SESSION 100000

static void
die(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stderr, "bench_client: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static int64_t
now_ns(clockid_t clk)
{
	struct timespec t;

	clock_gettime(clk, &t);
	return (int64_t) t.tv_sec * 1000000000LL + t.tv_nsec;
}

static PGconn *
connect_db(void)
{
	PGconn	   *c = PQconnectdb("");

	if (PQstatus(c) != CONNECTION_OK)
		die("connection failed: %s", PQerrorMessage(c));
	return c;
}

/* run a statement that must succeed; returns the first value (static buf) */
static const char *
exec_ok(PGconn *c, const char *sql)
{
	static __thread char val[256];
	PGresult   *r = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(r);

	if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
	{
		fprintf(stderr, "bench_client: \"%s\" failed: %s", sql, PQerrorMessage(c));
		PQclear(r);
		exit(1);
	}
	val[0] = '\0';
	if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && PQnfields(r) > 0)
		snprintf(val, sizeof(val), "%s", PQgetvalue(r, 0, 0));
	PQclear(r);
	return val;
}

static const char *
arg_str(int argc, char **argv, const char *name, const char *def)
{
	int			i;

	for (i = 2; i < argc - 1; i++)
		if (strcmp(argv[i], name) == 0)
			return argv[i + 1];
	if (def == NULL)
		die("missing argument %s", name);
	return def;
}

static long
arg_long(int argc, char **argv, const char *name, const char *def)
{
	return atol(arg_str(argc, argv, name, def));
}

/* ---------------------------------------------------------------- contend */

typedef struct
{
	int64_t		call,
				acquired,
				release,
				released;
} Event;

typedef struct
{
	int			id;
	PGconn	   *conn;
	const char *lock;
	int64_t		deadline;		/* CLOCK_MONOTONIC ns */
	pthread_barrier_t *barrier;
	Event	   *ev;
	int			nev;
} Session;

static void *
contend_main(void *arg)
{
	Session    *s = arg;
	char		lock_sql[512],
				unlock_sql[512];

	snprintf(lock_sql, sizeof(lock_sql), "SELECT etcd_lock('%s')", s->lock);
	snprintf(unlock_sql, sizeof(unlock_sql), "SELECT etcd_unlock('%s')", s->lock);
	/* warm-up: the first lock of a session also grants its lease */
	exec_ok(s->conn, lock_sql);
	exec_ok(s->conn, unlock_sql);
	pthread_barrier_wait(s->barrier);
	while (s->nev < MAX_EVENTS_PER_SESSION &&
		   now_ns(CLOCK_MONOTONIC) < __atomic_load_n(&s->deadline, __ATOMIC_SEQ_CST))
	{
		Event	   *e = &s->ev[s->nev];

		e->call = now_ns(CLOCK_REALTIME);
		exec_ok(s->conn, lock_sql);
		e->acquired = now_ns(CLOCK_REALTIME);
		e->release = now_ns(CLOCK_REALTIME);
		exec_ok(s->conn, unlock_sql);
		e->released = now_ns(CLOCK_REALTIME);
		s->nev++;
	}
	return NULL;
}

static int
cmd_contend(int argc, char **argv)
{
	int			c = (int) arg_long(argc, argv, "-c", "4");
	double		secs = atof(arg_str(argc, argv, "-T", "5"));
	const char *lock = arg_str(argc, argv, "-lock", "/bench/contend");
	const char *out = arg_str(argc, argv, "-out", NULL);
	Session    *ss = calloc(c, sizeof(Session));
	pthread_t  *th = calloc(c, sizeof(pthread_t));
	pthread_barrier_t barrier;
	int64_t		t0,
				t1;
	FILE	   *f;
	long		total = 0;
	int			i,
				j;

	if (c < 1 || c > 1000 || secs <= 0 || secs > 3600)
		die("contend: bad -c or -T");
	pthread_barrier_init(&barrier, NULL, c + 1);
	for (i = 0; i < c; i++)
	{
		ss[i].id = i;
		ss[i].conn = connect_db();
		ss[i].lock = lock;
		ss[i].barrier = &barrier;
		ss[i].ev = calloc(MAX_EVENTS_PER_SESSION, sizeof(Event));
		if (!ss[i].ev)
			die("out of memory");
	}
	/* the deadline is set before the threads start; warm-up is short */
	t0 = now_ns(CLOCK_MONOTONIC);
	for (i = 0; i < c; i++)
		ss[i].deadline = t0 + (int64_t) (secs * 1e9) + 30LL * 1000000000LL;
	for (i = 0; i < c; i++)
		pthread_create(&th[i], NULL, contend_main, &ss[i]);
	pthread_barrier_wait(&barrier);
	t0 = now_ns(CLOCK_MONOTONIC);
	/* real deadline: SECS after every session finished its warm-up */
	for (i = 0; i < c; i++)
		__atomic_store_n(&ss[i].deadline, t0 + (int64_t) (secs * 1e9), __ATOMIC_SEQ_CST);
	for (i = 0; i < c; i++)
		pthread_join(th[i], NULL);
	t1 = now_ns(CLOCK_MONOTONIC);

	f = fopen(out, "w");
	if (!f)
		die("cannot write %s", out);
	for (i = 0; i < c; i++)
	{
		for (j = 0; j < ss[i].nev; j++)
			fprintf(f, "%d %lld %lld %lld %lld\n", i,
					(long long) ss[i].ev[j].call, (long long) ss[i].ev[j].acquired,
					(long long) ss[i].ev[j].release, (long long) ss[i].ev[j].released);
		total += ss[i].nev;
		PQfinish(ss[i].conn);
	}
	fclose(f);
	printf("contend c=%d acquisitions=%ld wall_s=%.3f handoffs_per_s=%.1f\n",
		   c, total, (t1 - t0) / 1e9, total / ((t1 - t0) / 1e9));
	return 0;
}

/* ------------------------------------------------------------------- hold */

static int
cmd_hold(int argc, char **argv)
{
	int			n = (int) arg_long(argc, argv, "-n", "50");
	int			m = (int) arg_long(argc, argv, "-idle", "50");
	const char *pfx = arg_str(argc, argv, "-lock", "/bench/idle");
	const char *pidfile = arg_str(argc, argv, "-pidfile", NULL);
	long		max_secs = arg_long(argc, argv, "-max-secs", "600");
	PGconn	  **conns = calloc(n + m, sizeof(PGconn *));
	FILE	   *f;
	char		sql[512];
	int			i;
	int64_t		deadline;

	if (n < 0 || m < 0 || n + m > 5000)
		die("hold: bad -n/-idle");
	f = fopen(pidfile, "w");
	if (!f)
		die("cannot write %s", pidfile);
	for (i = 0; i < n + m; i++)
	{
		conns[i] = connect_db();
		if (i < n)
		{
			snprintf(sql, sizeof(sql), "SELECT etcd_lock('%s/%d')", pfx, i);
			exec_ok(conns[i], sql);
		}
		else
		{
			snprintf(sql, sizeof(sql), "SELECT etcd_lock_token('%s/never')", pfx);
			exec_ok(conns[i], sql);
		}
		fprintf(f, "%c %d\n", i < n ? 'H' : 'I', PQbackendPID(conns[i]));
	}
	fclose(f);
	printf("ready\n");
	fflush(stdout);

	deadline = now_ns(CLOCK_MONOTONIC) + max_secs * 1000000000LL;
	for (;;)
	{
		struct pollfd p = {.fd = 0,.events = POLLIN};
		int64_t		left = (deadline - now_ns(CLOCK_MONOTONIC)) / 1000000;
		char		buf[256];

		if (left <= 0)
			break;
		if (poll(&p, 1, (int) (left > 1000 ? 1000 : left)) > 0)
		{
			ssize_t		r = read(0, buf, sizeof(buf));

			if (r <= 0)
				break;			/* EOF: the harness is done measuring */
		}
	}
	for (i = 0; i < n + m; i++)
		PQfinish(conns[i]);
	printf("done\n");
	return 0;
}

/* ------------------------------------------------------------------ abort */

static char
proc_state(long pid)
{
	char		path[64],
				buf[512],
			   *p;
	FILE	   *f;
	size_t		len;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	f = fopen(path, "r");
	if (!f)
		return '?';
	len = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[len] = '\0';
	p = strrchr(buf, ')');
	return p && p[1] && p[2] ? p[2] : '?';
}

static int
cmd_abort(int argc, char **argv)
{
	int			iters = (int) arg_long(argc, argv, "-iters", "20");
	int			locks = (int) arg_long(argc, argv, "-locks", "10");
	const char *pfx = arg_str(argc, argv, "-lock", "/bench/abort");
	long		etcd_pid = arg_long(argc, argv, "-etcd-pid", "0");
	const char *refuse = arg_str(argc, argv, "-refuse-endpoint", "");
	const char *out = arg_str(argc, argv, "-out", NULL);
	PGconn	   *c = connect_db();
	PGconn	   *admin;
	FILE	   *f = fopen(out, "w");
	char		sql[512];
	int			k,
				j;

	if (!f)
		die("cannot write %s", out);
	if (refuse[0] == '\0')
		refuse = NULL;
	admin = refuse ? connect_db() : NULL;
	if (iters < 1 || iters > 10000 || locks < 1 || locks > 1000)
		die("abort: bad -iters/-locks");
	/* warm-up: lease grant, catalog caches */
	exec_ok(c, "BEGIN");
	snprintf(sql, sizeof(sql), "SELECT etcd_xact_lock('%s/warm')", pfx);
	exec_ok(c, sql);
	exec_ok(c, "ROLLBACK");

	for (k = 0; k < iters; k++)
	{
		int64_t		t;
		double		lat_us,
					base_us;
		int			w;

		/* baseline: a transaction that took no etcd lock */
		exec_ok(c, "BEGIN");
		exec_ok(c, "SELECT 1");
		t = now_ns(CLOCK_MONOTONIC);
		exec_ok(c, "ROLLBACK");
		base_us = (now_ns(CLOCK_MONOTONIC) - t) / 1e3;

		exec_ok(c, "BEGIN");
		for (j = 0; j < locks; j++)
		{
			snprintf(sql, sizeof(sql), "SELECT etcd_xact_lock('%s/%d/%d')", pfx, k, j);
			exec_ok(c, sql);
		}
		if (etcd_pid > 0)
		{
			if (kill((pid_t) etcd_pid, SIGSTOP) != 0)
				die("cannot stop etcd pid %ld: %s", etcd_pid, strerror(errno));
			for (w = 0; w < 200 && proc_state(etcd_pid) != 'T'; w++)
				usleep(1000);
			usleep(20000);
		}
		if (refuse)
		{
			/*
			 * etcd refusing connections: the instance is pointed at a port
			 * nothing listens on (the worker, which sends the releases,
			 * rereads its configuration within its next loop)
			 */
			snprintf(sql, sizeof(sql), "ALTER SYSTEM SET etcd_lock.endpoints = '%s'", refuse);
			exec_ok(admin, sql);
			exec_ok(admin, "SELECT pg_reload_conf()");
			usleep(300000);
		}
		t = now_ns(CLOCK_MONOTONIC);
		exec_ok(c, "ROLLBACK");
		lat_us = (now_ns(CLOCK_MONOTONIC) - t) / 1e3;
		if (refuse)
		{
			exec_ok(admin, "ALTER SYSTEM RESET etcd_lock.endpoints");
			exec_ok(admin, "SELECT pg_reload_conf()");
			usleep(300000);
		}
		if (etcd_pid > 0)
		{
			/* etcd stays stopped a little longer than the ROLLBACK took */
			usleep(50000);
			kill((pid_t) etcd_pid, SIGCONT);
		}
		fprintf(f, "rollback %.1f\nbase %.1f\n", lat_us, base_us);
		fflush(f);
		/* let the worker send the queued releases before the next round */
		usleep(etcd_pid > 0 ? 200000 : 20000);
	}
	fclose(f);
	PQfinish(c);
	if (admin)
		PQfinish(admin);
	printf("abort iters=%d locks=%d etcd_stopped=%s etcd_refusing=%s\n", iters, locks,
		   etcd_pid > 0 ? "yes" : "no", refuse ? "yes" : "no");
	return 0;
}

/* ------------------------------------------------------------------- leak */

/* reads "Key:   123 kB" lines of a /proc file into out (kB), -1 if absent */
static long
proc_kb(long pid, const char *file, const char *key)
{
	char		path[64],
				line[256];
	FILE	   *f;
	long		v = -1;
	size_t		klen = strlen(key);

	snprintf(path, sizeof(path), "/proc/%ld/%s", pid, file);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, klen) == 0 && line[klen] == ':')
		{
			v = atol(line + klen + 1);
			break;
		}
	fclose(f);
	return v;
}

static void
leak_sample(FILE *f, long pid, long done)
{
	fprintf(f, "sample cycles=%ld VmRSS=%ld RssAnon=%ld RssShmem=%ld VmData=%ld Pss=%ld Private_Dirty=%ld\n",
			done,
			proc_kb(pid, "status", "VmRSS"), proc_kb(pid, "status", "RssAnon"),
			proc_kb(pid, "status", "RssShmem"), proc_kb(pid, "status", "VmData"),
			proc_kb(pid, "smaps_rollup", "Pss"), proc_kb(pid, "smaps_rollup", "Private_Dirty"));
	fflush(f);
}

static int
cmd_leak(int argc, char **argv)
{
	long		n = arg_long(argc, argv, "-n", "10000");
	long		warm = arg_long(argc, argv, "-warmup", "1000");
	const char *lock = arg_str(argc, argv, "-lock", "/bench/leak");
	const char *out = arg_str(argc, argv, "-out", NULL);
	long		max_secs = arg_long(argc, argv, "-max-secs", "900");
	PGconn	   *c = connect_db();
	long		pid = PQbackendPID(c);
	char		lock_sql[512],
				unlock_sql[512];
	FILE	   *f = fopen(out, "w");
	long		i,
				done = 0;
	int64_t		t0,
				deadline;

	if (!f)
		die("cannot write %s", out);
	if (n < 1 || n > 10000000 || warm < 0 || warm > 1000000)
		die("leak: bad -n/-warmup");
	snprintf(lock_sql, sizeof(lock_sql), "SELECT etcd_lock('%s')", lock);
	snprintf(unlock_sql, sizeof(unlock_sql), "SELECT etcd_unlock('%s')", lock);
	fprintf(f, "backend_pid %ld\n", pid);
	for (i = 0; i < warm; i++)
	{
		exec_ok(c, lock_sql);
		exec_ok(c, unlock_sql);
	}
	leak_sample(f, pid, 0);
	t0 = now_ns(CLOCK_MONOTONIC);
	deadline = t0 + max_secs * 1000000000LL;
	for (i = 1; i <= n; i++)
	{
		exec_ok(c, lock_sql);
		exec_ok(c, unlock_sql);
		done = i;
		if (i % (n / 4 > 0 ? n / 4 : 1) == 0 || i == n)
			leak_sample(f, pid, i);
		if ((i & 255) == 0 && now_ns(CLOCK_MONOTONIC) > deadline)
		{
			leak_sample(f, pid, i);
			fprintf(f, "stopped_early max_secs=%ld\n", max_secs);
			break;
		}
	}
	fprintf(f, "cycles %ld seconds %.3f\n", done, (now_ns(CLOCK_MONOTONIC) - t0) / 1e9);
	fclose(f);
	PQfinish(c);
	printf("leak cycles=%ld\n", done);
	return 0;
}

/* ------------------------------------------------------------------ first */

static int
cmd_first(int argc, char **argv)
{
	long		n = arg_long(argc, argv, "-n", "200");
	const char *lock = arg_str(argc, argv, "-lock", "/bench/first");
	const char *out = arg_str(argc, argv, "-out", NULL);
	FILE	   *f = fopen(out, "w");
	char		lock_sql[512],
				unlock_sql[512];
	long		i;

	if (!f)
		die("cannot write %s", out);
	if (n < 1 || n > 100000)
		die("first: bad -n");
	snprintf(lock_sql, sizeof(lock_sql), "SELECT etcd_lock('%s')", lock);
	snprintf(unlock_sql, sizeof(unlock_sql), "SELECT etcd_unlock('%s')", lock);
	for (i = 0; i < n; i++)
	{
		PGconn	   *c = connect_db();
		int64_t		t0,
					t1,
					t2,
					t3;

		/* the extension is loaded (preloaded) before the timed call */
		exec_ok(c, "SELECT 1");
		t0 = now_ns(CLOCK_MONOTONIC);
		exec_ok(c, lock_sql);
		t1 = now_ns(CLOCK_MONOTONIC);
		exec_ok(c, unlock_sql);
		t2 = now_ns(CLOCK_MONOTONIC);
		exec_ok(c, lock_sql);
		t3 = now_ns(CLOCK_MONOTONIC);
		exec_ok(c, unlock_sql);
		PQfinish(c);
		fprintf(f, "%.1f %.1f\n", (t1 - t0) / 1e3, (t3 - t2) / 1e3);
		usleep(20000);			/* let the worker refill its lease pool */
	}
	fclose(f);
	printf("first sessions=%ld\n", n);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc < 2)
		die("usage: bench_client contend|hold|abort|leak|first [options]");
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (strcmp(argv[1], "contend") == 0)
		return cmd_contend(argc, argv);
	if (strcmp(argv[1], "hold") == 0)
		return cmd_hold(argc, argv);
	if (strcmp(argv[1], "abort") == 0)
		return cmd_abort(argc, argv);
	if (strcmp(argv[1], "leak") == 0)
		return cmd_leak(argc, argv);
	if (strcmp(argv[1], "first") == 0)
		return cmd_first(argc, argv);
	die("unknown mode %s", argv[1]);
	return 1;
}
