# Failures: etcd frozen past the lease TTL (lease loss: cancel / terminate /
# warn, verify_on_commit), etcd stopped and restarted, a backend SIGKILLed
# (crash restart), the worker killed alone.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $ttl = 3;
my $etcd = start_etcd();
my $node = etcd_node('faults', $etcd,
	'etcd_lock.lease_ttl' => "${ttl}s",
	'etcd_lock.request_timeout' => '1s',
	'restart_after_crash' => 'on');

# freeze etcd (SIGSTOP) for $secs, then resume it
sub freeze
{
	my ($secs) = @_;
	kill 'STOP', $etcd->{pid};
	sleep_full($secs);
	kill 'CONT', $etcd->{pid};
}

# --- lease loss, on_lease_loss = cancel (default): the running statement
# is cancelled with an error naming the lost lock
{
	my $s = session($node);
	$s->query_safe("SELECT etcd_lock('/loss')");
	my $m = start_query($s, 'SELECT pg_sleep(60)');
	my $t0 = time;
	kill 'STOP', $etcd->{pid};
	my $done = wait_until(sub { query_done($s, $m) }, 20);
	my $after = time - $t0;
	kill 'CONT', $etcd->{pid};
	ok($done, sprintf('cancel: the holder\'s statement was cancelled %.1f s after etcd froze', $after));
	my ($out, $err) = finish_query($s, $m, 5);
	like($err, qr/canceling statement: the etcd lease of this session expired; its locks were lost/,
		'cancel: the error says the lease expired');
	like($err, qr{Lost locks: "/loss"}, 'cancel: the error names the lost lock');
	is($s->query_safe("SELECT etcd_lock_token('/loss') IS NULL"), 't', 'etcd_lock_token is NULL for a lost lock');
	($out, $err) = finish_query($s, start_query($s, "SELECT etcd_lock('/other')"), 10);
	like($err, qr/lease of this session expired.*\n.*Lost locks: "\/loss"/, 'the next lock call fails with the same error');
	# etcd itself expires the lease once it runs again; then another session gets the lock
	my $other = session($node);
	my $t = $other->query_safe("SELECT etcd_lock('/loss', '20 s')");
	ok($t > 0, 'another session got the lost lock after etcd resumed');
	$other->query_safe("SELECT etcd_unlock('/loss')");
	my $t2 = $s->query_safe("SELECT etcd_lock('/loss')");
	ok($t2 > $t, 'the session that lost its lease locks again with a fresh lease');
	$s->query_safe("SELECT etcd_unlock_all()");
	$other->quit;
	$s->quit;
}

# --- on_lease_loss = terminate: the session ends
{
	my $s = session($node);
	my $pid = $s->query_safe("SET etcd_lock.on_lease_loss = terminate; SELECT pg_backend_pid()");
	$s->query_safe("SELECT etcd_lock('/loss')");
	my $m = start_query($s, 'SELECT pg_sleep(60)');
	kill 'STOP', $etcd->{pid};
	my $gone = wait_until(sub {
		$node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") eq '0' }, 20);
	kill 'CONT', $etcd->{pid};
	ok($gone, 'terminate: the holder\'s session ended');
	ok($node->log_contains("terminating connection: the etcd lease of this session expired"),
		'terminate: the server log says why');
	eval { $s->quit };
}

# --- on_lease_loss = warn: a WARNING at the next statement
{
	my $s = session($node);
	$s->query_safe("SET etcd_lock.on_lease_loss = warn");
	$s->query_safe("SELECT etcd_lock('/loss', '20 s')");
	freeze($ttl + 2);
	my ($out, $err) = finish_query($s, start_query($s, 'SELECT 42'), 10);
	is($out, '42', 'warn: the statement runs');
	like($err, qr/WARNING:  the etcd lease of this session expired; its locks were lost/,
		'warn: a WARNING says the lease expired');
	($out, $err) = finish_query($s, start_query($s, "SELECT etcd_lock('/x')"), 10);
	like($err, qr/ERROR:.*lease of this session expired/, 'warn: the next lock call fails');
	$s->quit;
}

# --- verify_on_commit: a transaction whose lock was lost cannot commit
{
	$node->safe_psql('postgres', 'CREATE TABLE guarded (v int)');
	my $s = session($node);
	$s->query_safe("SET etcd_lock.verify_on_commit = on");
	$s->query_safe("BEGIN; SELECT etcd_xact_lock('/guard'); INSERT INTO guarded VALUES (1);");
	freeze($ttl + 2);
	my ($out, $err) = finish_query($s, start_query($s, 'COMMIT'), 10);
	like($err, qr/ERROR:.*(lease of this session expired|cannot commit)/, 'verify_on_commit: COMMIT fails after the lock was lost');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM guarded'), '0', 'verify_on_commit: the rows are not there');
	# and with the lock intact, COMMIT succeeds
	$s->query_safe("BEGIN; SELECT etcd_xact_lock('/guard'); INSERT INTO guarded VALUES (2); COMMIT;");
	is($node->safe_psql('postgres', 'SELECT v FROM guarded'), '2', 'verify_on_commit: an intact lock commits');
	$s->quit;
}

# --- etcd stopped entirely
{
	my $s = session($node);
	$s->query_safe("BEGIN; SELECT etcd_xact_lock('/down1'); SELECT etcd_lock('/down2');");
	my $d = session($node);
	$d->query_safe("SELECT etcd_lock('/down3')");
	stop_etcd($etcd);
	my $t0 = time;
	my ($out, $err) = finish_query($s, start_query($s, "\\set VERBOSITY verbose\nSELECT etcd_lock('/down4')"), 30);
	my $el = time - $t0;
	like($err, qr/58000.*etcd is unreachable/s, 'etcd down: lock call fails with 58000');
	like($err, qr/Endpoints tried: http:\/\/127\.0\.0\.1:\d+: /, 'etcd down: the error lists the endpoints tried');
	ok($el < 5, sprintf('etcd down: the error came within the request timeout (%.2f s)', $el));
	$t0 = time;
	$s->query('ROLLBACK');
	my $rb = time - $t0;
	ok($rb < 1, sprintf('etcd down: ROLLBACK returned at once (%.1f ms)', $rb * 1000));
	$t0 = time;
	$d->quit;
	my $q = time - $t0;
	ok($q < 1, sprintf('etcd down: disconnect returned at once (%.1f ms)', $q * 1000));
	run_etcd($etcd);
	my $t = $s->query_safe("SELECT etcd_lock('/down1', '10 s')");
	ok($t > 0, 'etcd back: locking works again without a restart');
	$s->query_safe("SELECT etcd_unlock_all()");
	ok(wait_until(sub { scalar(keys %{ etcd_keys($etcd, '/down') }) == 0 }, 3 * $ttl),
		'etcd back: queued releases and revokes were finished (or expired); no keys left');
	$s->quit;
}

# --- the worker killed alone restarts and keeps surviving leases alive
{
	my $s = session($node);
	$s->query_safe("SELECT etcd_lock('/survive')");
	my $wpid = `ps -o pid= --ppid $node->{_pid} -o cmd= | grep 'etcd_lock worker' | awk '{print \$1}'`;
	chomp $wpid;
	ok($wpid =~ /^\d+$/, "found the worker ($wpid)");
	kill 'TERM', $wpid;
	sleep_full(2 * $ttl + 1);
	my $wpid2 = `ps -o pid= --ppid $node->{_pid} -o cmd= | grep 'etcd_lock worker' | awk '{print \$1}'`;
	chomp $wpid2;
	ok($wpid2 =~ /^\d+$/ && $wpid2 != $wpid, "the worker restarted ($wpid2)");
	is($node->safe_psql('postgres', "SELECT etcd_try_lock('/survive')"), 'f',
		'the lock survived 2 x TTL across the worker restart (no lease lapsed)');
	is($s->query_safe("SELECT etcd_lock_token('/survive') IS NOT NULL"), 't', 'its holder still holds it');
	$s->query_safe("SELECT etcd_unlock('/survive')");
	$s->quit;
}

# --- a backend SIGKILLed while holding a lock: crash restart, the lock
# frees within the lease TTL
{
	my $s = session($node);
	my $pid = $s->query_safe("SELECT pg_backend_pid()");
	$s->query_safe("SELECT etcd_lock('/crash')");
	my $t0 = time;
	kill 'KILL', $pid;
	eval { $s->quit };
	# while the server restarts, psql may exit before it reads its input:
	# IPC::Run's write then dies with a broken pipe, which is "not yet"
	ok(wait_until(sub {
		my $rc = eval { local $SIG{PIPE} = 'IGNORE'; ($node->psql('postgres', 'SELECT 1'))[0] } // 1;
		$rc == 0 }, 30), 'server back after crash restart');
	my $t = $node->safe_psql('postgres', "SELECT etcd_lock('/crash', '30 s')");
	my $el = time - $t0;
	ok($t > 0, sprintf('another session got the lock %.1f s after the SIGKILL', $el));
	ok($el <= $ttl + 1.5, "within the lease TTL ($ttl s) + 1 s (+0.5 s slack)");
	my $n = `ps -o pid= --ppid $node->{_pid} -o cmd= | grep -c 'etcd_lock worker'`;
	chomp $n;
	is($n, '1', 'the worker is back after the crash restart');
}

# --- the postmaster dies (SIGKILL, as an OOM kill or an operator would):
# the backends that exit hand their leases to the worker, which revokes
# them and the pool's before it exits, so their locks free at once; a
# backend still running keeps its lease (never revoked under a live
# session), left to expire once the worker is gone. Before, the worker
# exited with the postmaster: every lock stayed for the lease TTL (30 s).
{
	my $e = start_etcd();
	my $n = etcd_node('pmdeath', $e, 'etcd_lock.lease_ttl' => '30s');
	my $leases = sub {
		my $j = `curl -s -m 5 $e->{endpoint}/v3/lease/leases -d '{}'`;
		return scalar @{ (eval { JSON::PP::decode_json($j) } // {})->{leases} // [] };
	};
	my $idle = sess($n);
	ok_sql($idle, "SELECT etcd_lock('/pm/idle')");
	my $busy = sess($n);
	my $busy_pid = $busy->{pid};
	ok_sql($busy, "SELECT etcd_lock('/pm/busy')");
	# runs for minutes without waiting on its latch: alive after the postmaster
	start_query($busy, 'SELECT count(*) FROM generate_series(1, 4000000000)');
	my $wpid = $n->safe_psql('postgres', 'SELECT worker_pid FROM etcd_lock_status');
	ok(wait_until(sub { $leases->() >= 2 }, 10), 'postmaster death: the two sessions have leases');
	my $t0 = time;
	kill 'KILL', $n->{_pid};
	$n->{_pid} = undef;    # nothing to stop
	ok(wait_until(sub { !%{ etcd_keys($e, '/pm/idle') } }, 20),
		'postmaster death: the idle session\'s lock frees at once (before: after the lease TTL, 30 s)');
	note sprintf('freed %.1f s after the SIGKILL', time - $t0);
	ok(kill(0, $busy_pid), 'postmaster death: the busy session is still running');
	is(scalar keys %{ etcd_keys($e, '/pm/busy') }, 1, 'postmaster death: ... and its lock is not revoked under it');
	ok(wait_until(sub { !kill(0, $wpid) }, 30), 'postmaster death: the worker exits');
	is($leases->(), 1, 'postmaster death: the pool\'s leases are revoked; only the running session\'s is left');
	like(slurp_file($n->logfile), qr/the postmaster died/, 'postmaster death: the worker says so');
	kill 'KILL', $busy_pid;
	eval { $idle->quit };
	eval { $busy->quit };
	stop_etcd($e);
}

# --- issue 23 item 9: a clean stop looks clean. Before, every stop logged
# 'background worker "etcd_lock worker" (PID n) exited with exit code 1'.
# The worker exits 0 when the postmaster stops the server (SIGTERM from the
# postmaster), 1 when anyone else terminates it, so that it is started
# again (the block "the worker killed alone" above: kill TERM from here).
{
	my $off = -s $node->logfile;
	$node->stop('fast');
	my $log = slurp_file($node->logfile, $off);
	like($log, qr/etcd_lock worker stopped/, 'clean stop: the worker stopped');
	unlike($log, qr/"etcd_lock worker" \(PID \d+\) exited with exit code/, 'clean stop: no exit code is logged for it');
	like(slurp_file($node->logfile), qr/"etcd_lock worker" \(PID \d+\) exited with exit code 1/,
		'... while the worker terminated by someone else exited 1 (and was started again)');
}

done_testing();
