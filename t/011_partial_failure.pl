# Partial failure. Instance A reaches etcd only through a fault proxy that
# holds traffic (a partition with sockets left open), cuts connections and
# loses replies; instance B talks to etcd directly. Each way the first
# release left a session wrong about what it holds is reproduced here:
#  1. a release whose answer is lost and that statement_timeout cancels;
#  2. a try-lock applied by etcd whose answer is lost, resent to the next
#     endpoint;
#  3. a partition while the worker has releases queued: every holder is
#     told before another instance takes its lock (and by how much);
#  4. the worker stopped: backends check their own deadline (running and
#     idle holders, etcd_lock_token, re-entry, etcd_unlock_all);
# plus: a clean shutdown frees the locks at once; releases queued during an
# outage go out as soon as etcd answers; lease grants are resend-safe.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use FaultProxy;
use List::Util qw(min max);
use MIME::Base64;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $ttl = 3;
my $etcd = start_etcd();
my $fp = FaultProxy->start($etcd->{endpoint});

# request_timeout above the TTL: a worker that blocks on one request would
# miss the lease deadlines
my $a = etcd_node('a', { endpoint => $fp->endpoint },
	'etcd_lock.lease_ttl' => "${ttl}s", 'etcd_lock.request_timeout' => '5s');
my $b = etcd_node('b', $etcd,
	'etcd_lock.lease_ttl' => "${ttl}s", 'etcd_lock.request_timeout' => '2s');

sub nkeys
{
	my ($pfx) = @_;
	return scalar(keys %{ etcd_keys($etcd, $pfx) });
}

# lease_ids(): the IDs of every lease etcd has now
sub lease_ids
{
	my $json = `curl -s -m 5 $etcd->{endpoint}/v3/lease/leases -d '{}'`;
	return $json =~ /"ID":"(\d+)"/g;
}

# proc_cpu(pid): CPU seconds the process has used
sub proc_cpu
{
	my ($pid) = @_;
	open(my $f, '<', "/proc/$pid/stat") or return 0;
	my $st = <$f>;
	close $f;
	$st =~ s/^.*\) //;
	my @f = split(' ', $st);
	return ($f[11] + $f[12]) / (POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100);
}

sub fired
{
	return $fp->status->{drops_fired};
}

sub worker_pid
{
	my ($node) = @_;
	my $pid = `ps -o pid= -o cmd= --ppid $node->{_pid} | grep 'etcd_lock worker' | awk '{print \$1}'`;
	chomp $pid;
	return $pid;
}

# etcd's own counters of the LeaseKeepAlive stream RPC: streams started
# and messages received
sub ka_metrics
{
	my $m = `curl -s -m 5 $etcd->{endpoint}/metrics`;
	my ($started) = $m =~ /^grpc_server_started_total\{grpc_method="LeaseKeepAlive".*\} (\d+)/m;
	my ($msgs) = $m =~ /^grpc_server_msg_received_total\{grpc_method="LeaseKeepAlive".*\} (\d+)/m;
	return ($started // 0, $msgs // 0);
}

# --- keepalives of many leases travel on one stream
{
	my @s = map { session($b) } 1 .. 20;
	$s[$_]->query_safe("SELECT etcd_lock('/ka$_')") for 0 .. 19;
	my ($st0, $m0) = ka_metrics();
	my $wpid = worker_pid($b);
	my $c0 = proc_cpu($wpid);
	sleep_full(2 * $ttl);
	my $cpu = (proc_cpu($wpid) - $c0) / (2 * $ttl);
	my ($st1, $m1) = ka_metrics();
	ok($cpu < 0.2, sprintf('keepalive stream: the worker is idle between renewals (%.1f%% of a core)', 100 * $cpu));
	is($b->safe_psql('postgres', "SELECT count(*) FROM generate_series(0, 19) i WHERE etcd_try_lock('/ka' || i)"), '0',
		'keepalive stream: 20 locks held past 2 x TTL');
	ok($m1 - $m0 >= 20 * 3, sprintf('keepalive stream: %d renewals in %d s', $m1 - $m0, 2 * $ttl));
	# one-shot renewals would be one stream each (>= 120 here); a stream
	# may be reopened now and then (a late answer ends it)
	ok($st1 - $st0 <= 5, sprintf('keepalive stream: %d renewals on %d new keepalive stream(s), not one request each',
		$m1 - $m0, $st1 - $st0));
	$_->query_safe("SELECT etcd_unlock_all()") for @s;
	$_->quit for @s;
}

# --- 1. etcd_unlock cancelled by statement_timeout while etcd applied the
# delete but its answer is lost: the session must not go on claiming it
{
	my $s = session($a);
	my $sb = session($b);
	$s->query_safe("SELECT etcd_lock('/f1')");
	my $f0 = fired();
	$fp->drop_reply('request_delete_range', 'hold');
	my ($out, $err) = finish_query($s, start_query($s,
		"SET statement_timeout = '500ms'; SELECT etcd_unlock('/f1')"), 20);
	$s->query_safe('RESET statement_timeout');
	is(fired(), $f0 + 1, '1: the release reached etcd and its answer was lost');
	like($err, qr/statement timeout/, '1: etcd_unlock was cancelled by statement_timeout');
	is(nkeys('/f1/'), 0, '1: etcd applied the delete');
	is($sb->query_safe("SELECT etcd_try_lock('/f1')"), 't', '1: another instance takes the lock');
	is($s->query_safe("SELECT etcd_lock_token('/f1') IS NULL"), 't',
		'1: etcd_lock_token does not report the lock whose release was sent');
	is($s->query_safe("SELECT etcd_try_lock('/f1')"), 'f',
		'1: a try-lock does not re-enter it: it is held by the other instance');
	$sb->query("SELECT etcd_unlock('/f1')");
	$s->query("SELECT etcd_unlock_all()");
	$s->quit;
	$sb->quit;
}

# --- 2. a try-lock applied by etcd whose answer is lost; libcurl's
# connection error sends it to the next endpoint, which sees our own key
{
	my $a2 = etcd_node('a2', { endpoint => $fp->endpoint . ",$etcd->{endpoint}" },
		'etcd_lock.lease_ttl' => "${ttl}s", 'etcd_lock.request_timeout' => '2s');
	my $s = session($a2);
	$s->query_safe("SELECT etcd_lock('/warm'); SELECT etcd_unlock('/warm')");
	my $pfx = encode_base64('/f2/', '');
	my $f0 = fired();
	$fp->drop_reply('"compare":\[\{"key":"' . $pfx . '"', 'cut');
	my $r = $s->query_safe("SELECT etcd_try_lock('/f2')");
	is(fired(), $f0 + 1, '2: the try-lock reached etcd and its answer was lost');
	my $keys = etcd_keys($etcd, '/f2/');
	is($r, 't', '2: the resent try-lock recognises its own key: the lock is held');
	is(scalar(keys %$keys), 1, '2: exactly one key under the name (ours)');
	$s->query("SELECT etcd_unlock('/f2')") if $r eq 't';
	ok(wait_until(sub { nkeys('/f2/') == 0 }, 10), '2: no orphan key is left once the session lets go');
	my $sb = session($b);
	is($sb->query_safe("SELECT etcd_try_lock('/f2')"), 't', '2: another instance can take the name');
	$sb->query("SELECT etcd_unlock('/f2')");
	$sb->quit;
	$s->quit;

	# a lease grant whose answer is lost is resent with the same ID (ours,
	# chosen by the extension): etcd answers "already exists" and the lease
	# is used, not orphaned. Grants are the worker's (it keeps leases
	# granted ahead for first locks): every lease that appears in etcd must
	# be one the instance knows (it lists them in pg_stat_tmp).
	my %before = map { $_ => 1 } lease_ids();
	$f0 = fired();
	$fp->drop_reply('/v3/lease/grant', 'cut');
	my $g = session($a2);
	is($g->query_safe("SELECT etcd_lock('/g') > 0"), 't', 'grant: the session locks');
	ok(wait_until(sub { fired() == $f0 + 1 }, 20), 'grant: a grant reached etcd and its answer was lost');
	my $file = $a2->data_dir . '/pg_stat_tmp/etcd_lock.leases';
	my (@new, %known);
	ok(wait_until(sub {
		@new = grep { !$before{$_} } lease_ids();
		%known = map { $_ => 1 } (slurp_file($file) =~ /^(\d+)$/mg);
		return @new && !grep { !$known{$_} } @new;
	}, 20), 'grant: every new lease in etcd is one the instance knows: the resent grant made no orphan');
	note 'grant: new leases ' . join(',', @new) . '; known ' . join(',', sort keys %known);
	$g->query("SELECT etcd_unlock_all()");
	$g->quit;
	$a2->stop;
}

# --- 3. a partition of instance A while its worker has two releases queued
# and three sessions hold locks acquired at different times: every holder
# is told before instance B can take its lock
{
	my @names = ('/p1', '/p2', '/p3');
	my @h = map { session($a) } 0 .. 2;
	for my $i (0 .. 2)
	{
		$h[$i]->query_safe("SELECT etcd_lock('$names[$i]')");
		usleep(600_000) if $i < 2;
	}
	my @x = map { session($a) } 0 .. 1;
	# (ROLLBACK would wait etcd_lock.release_wait for the worker: not here)
	$x[$_]->query_safe("SET etcd_lock.release_wait = 0; BEGIN; SELECT etcd_xact_lock('/px$_')") for 0 .. 1;
	my @hm = map { start_query($h[$_], 'SELECT pg_sleep(60)') } 0 .. 2;
	usleep(100_000);
	$fp->hold;
	my $t_hold = time;
	$x[$_]->query_safe('ROLLBACK') for 0 .. 1;    # releases the worker cannot send
	my @w = map { session($b) } 0 .. 2;
	my @wm = map { start_query($w[$_], "SELECT etcd_lock('$names[$_]', '30 s')") } 0 .. 2;
	my (%told, %taken);
	wait_until(sub {
		for my $i (0 .. 2)
		{
			$told{$i} //= time if query_done($h[$i], $hm[$i]);
			$taken{$i} //= time if query_done($w[$i], $wm[$i]);
		}
		return keys(%told) == 3 && keys(%taken) == 3;
	}, 40);
	$fp->pass;
	my @margins;
	for my $i (0 .. 2)
	{
		my $ok = defined $told{$i} && defined $taken{$i} && $told{$i} < $taken{$i};
		push @margins, $taken{$i} - $told{$i} if $ok;
		ok($ok, sprintf('3: the holder of %s was told %s before instance B took the lock', $names[$i],
			$ok ? sprintf('%.2f s', $taken{$i} - $told{$i}) : 'NOT'));
		my ($out, $err) = eval { finish_query($h[$i], $hm[$i], 30) };
		like($err // '', qr/the etcd lease of this session expired; its locks were lost/,
			"3: the holder of $names[$i] got the lease-loss error");
		($out, $err) = eval { finish_query($w[$i], $wm[$i], 30) };
		ok(($out // 0) > 0, "3: instance B got $names[$i]");
	}
	note sprintf('3: partition margins (told -> taken elsewhere): %s s; told %.2f-%.2f s after the partition began',
		join(', ', map { sprintf('%.2f', $_) } @margins),
		min(map { $told{$_} - $t_hold } keys %told) // -1,
		max(map { $told{$_} - $t_hold } keys %told) // -1);
	$_->query("SELECT etcd_unlock_all()") for @w;
	$_->quit for @w, @h, @x;
}

# --- 4. the worker stopped (SIGSTOP): nothing renews the lease, and the
# backends must notice their own deadline: a running holder is cancelled,
# an idle holder's next statement fails, nothing reports the lock held
{
	my $wpid = worker_pid($a);
	ok($wpid =~ /^\d+$/, "4: found instance A's worker ($wpid)");
	my $s = session($a);
	my $idle = session($a);
	$s->query_safe("SELECT etcd_lock('/w4')");
	$idle->query_safe("SELECT etcd_lock('/w4idle')");
	kill 'STOP', $wpid;
	my $m = start_query($s, 'SELECT pg_sleep(60)');
	my $sb = session($b);
	my $mb = start_query($sb, "SELECT etcd_lock('/w4', '30 s')");
	my ($told, $taken);
	wait_until(sub {
		$told //= time if query_done($s, $m);
		$taken //= time if query_done($sb, $mb);
		return defined $told && defined $taken;
	}, 30);
	ok(defined $told && defined $taken && $told < $taken,
		sprintf('4: worker stopped: the holder was told %s before another instance took its lock',
			defined $told && defined $taken ? sprintf('%.2f s', $taken - $told) : 'NOT'));
	my ($out, $err) = eval { finish_query($s, $m, 30) };
	like($err // '', qr/lease of this session expired/, '4: the running holder got the lease-loss error');
	is($s->query_safe("SELECT etcd_lock_token('/w4') IS NULL"), 't', '4: etcd_lock_token is NULL past the deadline');
	($out, $err) = finish_query($s, start_query($s, "SELECT etcd_try_lock('/w4')"), 10);
	isnt($out, 't', '4: a try-lock past the deadline does not re-enter the lock');

	($out, $err) = finish_query($idle, start_query($idle, 'SELECT 1'), 10);
	like($err, qr/canceling statement: the etcd lease of this session expired; its locks were lost/,
		'4: cancel mode, idle holder: its next statement fails with the loss');
	like($err, qr{Lost locks: "/w4idle"}, '4: ... naming the lost lock');
	($out, $err) = finish_query($idle, start_query($idle, 'SELECT 2'), 10);
	is($out, '2', '4: the loss is told once; the session goes on');
	($out, $err) = finish_query($idle, start_query($idle, 'SELECT etcd_unlock_all()'), 10);
	unlike($err, qr/ERROR/, '4: etcd_unlock_all after the loss raises no error');
	like($err, qr/WARNING:.*lease of this session expired/, '4: ... but a WARNING');
	kill 'CONT', $wpid;
	($out, $err) = finish_query($sb, $mb, 30);
	$sb->query("SELECT etcd_unlock_all()");
	is($idle->query_safe("SELECT etcd_lock('/w4idle', '10 s') > 0"), 't', '4: after the loss the session locks again with a fresh lease');
	$_->quit for $s, $idle, $sb;
}

# --- a clean (fast) shutdown releases the locks of the instance at once,
# not after the lease TTL
{
	my $c = etcd_node('c', $etcd, 'etcd_lock.lease_ttl' => '10s');
	my $s = session($c);
	$s->query_safe("SELECT etcd_lock('/shut')");
	my $t0 = time;
	$c->stop('fast');
	eval { $s->quit };
	my $sb = session($b);
	my $tok = $sb->query_safe("SELECT etcd_lock('/shut', '20 s')");
	my $el = time - $t0;
	ok($tok > 0 && $el < 3, sprintf('fast shutdown: another instance got the lock %.2f s after the stop began (TTL 10 s)', $el));
	$sb->quit;
}

# --- a crash restart (a backend SIGKILLed) does not hold the old locks
# for a TTL: the new worker revokes the previous run's leases
{
	my $e = etcd_node('e', $etcd, 'etcd_lock.lease_ttl' => '10s', 'restart_after_crash' => 'on');
	my $s = session($e);
	my $pid = $s->query_safe('SELECT pg_backend_pid()');
	$s->query_safe("SELECT etcd_lock('/crash10')");
	usleep(200_000);    # the worker records the lease
	my $t0 = time;
	kill 'KILL', $pid;
	eval { $s->quit };
	my $sb = session($b);
	my $tok = $sb->query_safe("SELECT etcd_lock('/crash10', '30 s')");
	my $el = time - $t0;
	ok($tok > 0 && $el < 5, sprintf('crash restart: another instance got the lock %.2f s after the SIGKILL (TTL 10 s)', $el));
	ok(wait_until(sub { my ($rc) = $e->psql('postgres', 'SELECT 1'); $rc == 0 }, 30), 'crash restart: the server is back');
	ok($e->log_contains("revoking \\d+ lease\\(s\\) of this server's previous run"), 'crash restart: the worker says it revoked the old leases');
	$sb->query_safe("SELECT etcd_unlock('/crash10')");
	$sb->quit;
	$e->stop;
}

# --- releases queued while etcd was unreachable go out as soon as it
# answers again
{
	my $d = etcd_node('d', { endpoint => $fp->endpoint },
		'etcd_lock.lease_ttl' => '10s', 'etcd_lock.request_timeout' => '1s');
	my @x = map { session($d) } 0 .. 2;
	$x[$_]->query_safe("SET etcd_lock.release_wait = 0; BEGIN; SELECT etcd_xact_lock('/out$_')") for 0 .. 2;
	$fp->hold;
	$x[$_]->query_safe('ROLLBACK') for 0 .. 2;
	sleep_full(4);
	is(nkeys('/out'), 3, 'outage: the releases are still queued');
	$fp->pass;
	my $t0 = time;
	ok(wait_until(sub { nkeys('/out') == 0 }, 20), 'outage: the queued releases went out');
	my $el = time - $t0;
	ok($el < 1.5, sprintf('outage: %.2f s after etcd answered again', $el));
	# quiet logs: a 4 s outage with 3 releases and 3 leases retried every
	# 0.5 s is dozens of failed requests, but a state change is logged once.
	# The keys are gone once etcd applied the deletes; the worker notes the
	# answer a moment later
	wait_until(sub { slurp_file($d->logfile) =~ /etcd is reachable again after/ }, 10);
	my @lines = grep { /etcd_lock worker: / } split /\n/, slurp_file($d->logfile);
	ok(@lines <= 8, sprintf('outage: %d worker log lines (unreachable, reachable again: no line per retry)', scalar @lines));
	like(join("\n", @lines), qr/etcd is unreachable.*\n(?:.*\n)*.*etcd is reachable again after/,
		'outage: the log says unreachable, then reachable again');
	is($d->safe_psql('postgres', 'SELECT etcd_reachable FROM etcd_lock_status'), 't',
		'outage: etcd_lock_status says reachable again');
	$_->quit for @x;
	$d->stop;
}

# --- etcd_lock_holders never makes text of a name that is not valid in
# the database encoding (any client can write any key)
{
	my $lease = `curl -s -m 5 $etcd->{endpoint}/v3/lease/grant -d '{"TTL":"30"}'`;
	my ($id) = $lease =~ /"ID":"(\d+)"/;
	for my $name ("/enc/ok", "/enc/bad\xff\xfe")
	{
		my $k = encode_base64(sprintf('%s/%x', $name, $id), '');
		system("curl -s -m 5 $etcd->{endpoint}/v3/kv/put -d '{\"key\":\"$k\",\"value\":\"\",\"lease\":\"$id\"}' >/dev/null");
	}
	my $s = session($b);
	my ($out, $err) = finish_query($s, start_query($s,
		"SELECT string_agg(name, ',') FROM etcd_lock_holders('/enc/')"), 10);
	is($out, '/enc/ok', 'holders: the name with invalid UTF-8 is not returned, the valid one is');
	like($err, qr/NOTICE:.*skipped 1 lock name/, 'holders: a NOTICE says one was skipped');
	unlike($err, qr/ERROR/, 'holders: no error');
	system("curl -s -m 5 $etcd->{endpoint}/v3/lease/revoke -d '{\"ID\":\"$id\"}' >/dev/null");
	$s->quit;
}

ok(!$a->log_contains('terminated by signal') && !$b->log_contains('terminated by signal'), 'no backend crashed');
my $lines = () = slurp_file($a->logfile) =~ /etcd_lock worker: /g;
note "worker log lines on instance A: $lines";
note "fault schedule:\n" . $fp->log_text;
done_testing();
