# A misbehaving etcd gateway (t/FakeGateway.pm): garbage, truncated, huge,
# mistyped and empty answers, error statuses of etcd 3.4 and 3.6 shapes,
# a stall, dropped connections, invalid base64, a watch stream that breaks
# in several ways, and failover past a dead or hung endpoint. Each lock call
# must end in an ERROR that names etcd (SQLSTATE 58000, or 42501 for a
# permission error; never class 08) within a bound, the session must keep
# working, and no backend may crash or spin.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use FakeGateway;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $gw = FakeGateway->start();
my $node = etcd_node('badpeer', { endpoint => $gw->{endpoint} },
	'etcd_lock.request_timeout' => '1s',
	'etcd_lock.lease_ttl' => '10s');

my $key = qr{^/bad/[0-9a-f]+$};    # our queue key (the lease ID is ours, random)
my $s = session($node);
$s->query("\\set VERBOSITY verbose");
my $pid = $s->query_safe('SELECT pg_backend_pid()');

# the fake plays a correct etcd in mode ok
is($s->query_safe("SELECT etcd_lock('/bad')"), $FakeGateway::MY_REV, 'mode ok: the lock is granted (the fake plays etcd)');
is($s->query_safe("SELECT etcd_unlock('/bad')"), 't', 'mode ok: and released');

# session_ok(name): same backend, it still runs queries and locks once the
# peer behaves again
sub session_ok
{
	my ($name) = @_;
	$gw->set_mode('ok');
	my ($out, $err) = finish_query($s, start_query($s, 'SELECT pg_backend_pid()'), 10);
	is($out, $pid, "$name: same session, same backend afterwards");
	($out, $err) = finish_query($s,
		start_query($s, "SELECT etcd_lock('/after') = $FakeGateway::MY_REV AND etcd_unlock('/after')"), 10);
	is($out, 't', "$name: the session locks again once etcd behaves");
	return;
}

# bad_case(mode, name, detail => qr, state => 'XXXXX', min => s): the lock
# call fails cleanly
sub bad_case
{
	my ($mode, $name, %want) = @_;
	$gw->set_mode($mode);
	my $t0 = time;
	my ($out, $err) = finish_query($s, start_query($s, "SELECT etcd_lock('/bad')"), 60);
	my $el = time - $t0;
	like($err, qr/ERROR:  \w{5}: etcd_lock: could not [^\n]*etcd/, "$name: ERROR naming etcd");
	my ($state) = $err =~ /ERROR:  (\w{5}):/;
	$state //= 'none';
	my $expect = $want{state} // '58000';
	ok($state eq $expect && $state !~ /^08/, "$name: SQLSTATE $state (want $expect, never class 08)");
	like($err, $want{detail}, "$name: the detail says what was wrong") if $want{detail};
	ok($el < 10 && $el >= ($want{min} // 0), sprintf('%s: the error came after %.2f s', $name, $el));
	if (($want{state} // '') eq '42501')
	{
		# etcd refused the write: no key was made, nothing is cleaned up
		usleep(500_000);
		ok(!grep({ ($_->{key} // '') =~ $key } grep({ $_->{path} =~ m{^/v3/kv/(deleterange|range|txn)$} } $gw->requests(since => $t0))),
			"$name: no cleanup of a key that etcd refused to write");
	}
	else
	{
		ok(wait_until(sub { grep { ($_->{key} // '') =~ $key } grep({ $_->{path} =~ m{^/v3/kv/(deleterange|range|txn)$} } $gw->requests(since => $t0)) }, 5),
			"$name: the worker removed the abandoned queue key");
	}
	session_ok($name);
	return ($out, $err);
}

bad_case('garbage', 'garbage bytes', detail => qr/answered invalid JSON/);
bad_case('truncated', 'truncated JSON', detail => qr/answered invalid JSON/);
bad_case('empty200', 'HTTP 200 with an empty body', detail => qr/answered invalid JSON/);
# rss_anon_kb(pid): private memory of a process
sub rss_anon_kb
{
	my ($p) = @_;
	open(my $f, '<', "/proc/$p/status") or return -1;
	my ($kb) = map { /^RssAnon:\s+(\d+)/ ? $1 : () } <$f>;
	close $f;
	return $kb // -1;
}
my $rss0 = rss_anon_kb($pid);
bad_case('huge', 'a 20 MB answer (Content-Length)', detail => qr/answer too large/);
bad_case('huge_chunked', 'a 20 MB answer (chunked)', detail => qr/answer too large/);
my $rss1 = rss_anon_kb($pid);
bad_case('huge', 'a third 20 MB answer');
my $rss2 = rss_anon_kb($pid);
note "backend RssAnon before the 20 MB answers: $rss0 kB, after two: $rss1 kB, after three: $rss2 kB";
ok($rss2 >= 0 && $rss2 - $rss1 < 4096, "20 MB answers do not accumulate memory in the backend ($rss1 kB -> $rss2 kB)");
for my $t (qw(revision responses kvs bignum negative float nullkvs))
{
	bad_case("type_$t", "wrong type: $t", detail => qr{answered an unexpected /v3/kv/txn});
}
bad_case('array', 'a JSON array', detail => qr{answered an unexpected /v3/kv/txn});
my (undef, $err500) = bad_case('http500', 'HTTP 500 (3.4 error shape)', detail => qr/HTTP 500/);
{
	like($err500, qr/no leader/, 'HTTP 500: the detail carries etcd\'s message ("no leader")');
}
bad_case('http400', 'HTTP 400 (3.6 error shape)', detail => qr/etcd said: HTTP 400: bad \(code 3\)/);
bad_case('http401', 'HTTP 401', detail => qr/HTTP 401: etcdserver: user name is empty \(code 16\)/);
bad_case('http403', 'HTTP 403 permission denied', state => '42501', detail => qr/permission denied \(code 7\)/);
bad_case('http404_plain', 'HTTP 404 from something that is not the client API',
	detail => qr/HTTP 404 from http:\S+: not etcd's client API .*client URLs such as http:\/\/host:2379, without a path/);
bad_case('http403_36', 'HTTP 403 permission denied (3.6 error shape)', state => '42501',
	detail => qr/permission denied \(code 7\)/);
bad_case('stall', 'a stall (request read, never answered)', detail => qr/timed out/, min => 0.9);
bad_case('close_mid', 'connection closed mid-answer', detail => qr/Endpoints tried: http:\S+: \S/);
bad_case('close_at_once', 'connection closed before any answer', detail => qr/Endpoints tried: http:\S+: \S/);
bad_case('badb64', 'invalid base64 in a key', detail => qr{answered an unexpected /v3/kv/txn});

# an answer cut into an error message must stay valid UTF-8
{
	my (undef, $err) = bad_case('utf8_cut', 'non-JSON answer with a character at byte 100');
	my $copy = $err;
	{
		ok(utf8::decode($copy), 'the error text is valid UTF-8');
	}
	$gw->set_mode('utf8_cut');
	my ($out, $e2) = finish_query($s,
		start_query($s, "SET client_encoding = 'LATIN1';\nSELECT etcd_lock('/bad');\nRESET client_encoding;"), 30);
	{
		like($e2, qr/etcd_lock: could not/, 'with client_encoding LATIN1 the client still gets the etcd error');
	}
	note "client_encoding LATIN1 got: " . join(' | ', grep { /ERROR/ } split /\n/, $e2);
	session_ok('utf8_cut LATIN1');
}

# --- the other calls that read etcd's answers: try-lock, unlock, the
# holders listing and the COMMIT-time verification
# call_fails(sql, name, mode): one statement under a bad mode fails cleanly
sub call_fails
{
	my ($sql, $name, $mode, $what) = @_;
	$gw->set_mode($mode);
	my $t0 = time;
	my ($out, $err) = finish_query($s, start_query($s, $sql), 30);
	my $el = time - $t0;
	like($err, qr/ERROR:  58000: etcd_lock: could not \Q$what\E: (unexpected answer from etcd|etcd is unreachable)/,
		"$name: ERROR 58000 naming etcd");
	ok($el < 10, sprintf('%s: after %.2f s', $name, $el));
	$gw->set_mode('ok');
	return ($out, $err);
}
call_fails("SELECT etcd_try_lock('/bad')", 'try-lock, garbage', 'garbage', 'acquire a lock');
call_fails("SELECT etcd_try_lock('/bad')", 'try-lock, negative revision', 'type_negative', 'acquire a lock');
session_ok('try-lock');
{
	is($s->query_safe("SELECT etcd_lock('/u')"), $FakeGateway::MY_REV, 'unlock: lock taken');
	# (counted from before the unlock: the worker may repeat the release
	# before the failed call has returned here)
	my $tf = time;
	call_fails("SELECT etcd_unlock('/u')", 'unlock, truncated answer', 'truncated',
		'confirm the release of etcd lock "/u" (this session no longer holds it; the worker retries the release)');
	# the delete may have been applied: the key is never relied on again
	is($s->query_safe("SELECT etcd_lock_token('/u') IS NULL"), 't',
		'unlock: a release etcd did not confirm is forgotten at once');
	ok(wait_until(sub { scalar(grep { $_->{kind} eq 'release' } $gw->requests(since => $tf, path => '/v3/kv/txn')) >= 2 }, 5),
		'unlock: the worker repeats the unconfirmed release (a second release txn after the session\'s own)');
	session_ok('unlock');
}
call_fails("SELECT count(*) FROM etcd_lock_holders('/')", 'etcd_lock_holders, garbage', 'garbage', 'list locks');
call_fails("SELECT count(*) FROM etcd_lock_holders('/')", 'etcd_lock_holders, kvs an object', 'type_kvs_list', 'list locks');
session_ok('etcd_lock_holders');
{
	$s->query_safe("SET etcd_lock.verify_on_commit = on");
	$s->query_safe("BEGIN; SELECT etcd_xact_lock('/v');");
	my ($out, $err) = call_fails('COMMIT', 'verify_on_commit, garbage', 'garbage', 'verify the locks of this session');
	is($s->query_safe("SELECT etcd_lock_token('/v') IS NULL"), 't', 'verify_on_commit: the failed COMMIT dropped the xact lock');
	$s->query_safe("RESET etcd_lock.verify_on_commit");
	session_ok('verify_on_commit');
}

# --- the wait path with a watch stream that misbehaves. The acquire txn
# says another key (created earlier) holds the lock; the queue read names
# it as predecessor; then the watch breaks.
my $clk = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
sub cpu_seconds
{
	my ($p) = @_;
	open(my $f, '<', "/proc/$p/stat") or return 0;
	my $st = <$f>;
	close $f;
	$st =~ s/^.*\) //;
	my @f = split(' ', $st);
	return ($f[11] + $f[12]) / $clk;
}

sub watch_case
{
	my ($mode, $name) = @_;
	$gw->set_mode($mode);
	my $t0 = time;
	my $m = start_query($s, "SELECT etcd_lock('/bad')");
	ok(wait_until(sub { $gw->requests(since => $t0, path => '/v3/watch') >= 1 }, 10),
		"$name: the waiter reached the watch");
	usleep(300_000);
	my ($c0, $w0) = (cpu_seconds($pid), time);
	my $n0 = scalar($gw->requests(since => $t0));
	sleep(1);
	my ($c1, $w1) = (cpu_seconds($pid), time);
	my $n1 = scalar($gw->requests(since => $t0));
	my $cpu = ($c1 - $c0) / ($w1 - $w0);
	my $rate = ($n1 - $n0) / ($w1 - $w0);
	ok(!query_done($s, $m), "$name: still waiting (no ERROR, no crash)");
	ok($cpu < 0.9, sprintf('%s: the waiter does not spin (%.0f%% of a CPU)', $name, 100 * $cpu));
	note sprintf('%s: %.0f requests/s to etcd while waiting, %.0f%% CPU', $name, $rate, 100 * $cpu);
	{
		ok($rate < 50, sprintf('%s: at most 50 requests/s while waiting (%.0f)', $name, $rate));
	}
	my $tc = time;
	$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
	my ($out, $err) = finish_query($s, $m, 10);
	my $el = time - $tc;
	like($err, qr/canceling statement due to user request/, "$name: pg_cancel_backend ends the wait");
	ok($el < 3, sprintf('%s: cancel returned after %.2f s', $name, $el));
	ok(wait_until(sub { grep { ($_->{key} // '') =~ $key } grep({ $_->{path} =~ m{^/v3/kv/(deleterange|range|txn)$} } $gw->requests(since => $tc)) }, 5),
		"$name: the cancelled waiter's queue key was removed");
	session_ok($name);
	return;
}

watch_case('watch_hang', 'watch created, then silent (the normal wait)');
watch_case('watch_garbage', 'watch stream sends garbage lines');
watch_case('watch_garbage_first', 'watch stream starts with garbage');
watch_case('watch_end', 'watch stream ends after created');
watch_case('watch_abrupt', 'watch connection drops mid-line');

# etcd 3.7.0-3.7.3 list keys-only ranges without `lease` (etcd issue
# #22209): a holder's key must still hold. Before the fix the missing lease
# read as 0, the holder's key as foreign data, and the waiter was granted
# the lock at once (token 100) while /bad/1 held it.
{
	$gw->set_omit_lease(1);
	$gw->set_mode('watch_hang');
	my $t0 = time;
	my ($out, $err) = finish_query($s, start_query($s, "SELECT etcd_lock('/bad', '1.5 s')"), 30);
	like($err, qr/55P03: could not obtain etcd lock "\/bad" within the timeout/,
		'listing without lease (etcd 3.7): the waiter waits for the holder named by the key, then times out');
	ok(!defined $out || $out eq '', 'listing without lease (etcd 3.7): no token was returned');
	ok($gw->requests(since => $t0, path => '/v3/watch') >= 1, 'listing without lease (etcd 3.7): it watched its predecessor');
	$gw->set_mode('ok');
	is($s->query_safe("SELECT etcd_try_lock('/free37') AND etcd_unlock('/free37')"), 't',
		'listing without lease (etcd 3.7): a free name is still taken');
	$gw->set_omit_lease(0);
	session_ok('listing without lease');
}

# a waiter's own timeout still ends the wait while the watch keeps breaking
{
	$gw->set_mode('watch_end');
	my $t0 = time;
	my ($out, $err) = finish_query($s, start_query($s, "SELECT etcd_lock('/bad', '1.5 s')"), 30);
	my $el = time - $t0;
	like($err, qr/55P03: could not obtain etcd lock "\/bad" within the timeout/, 'broken watch: the timeout argument still ends the wait (55P03)');
	ok($el >= 1.4 && $el < 5, sprintf('broken watch: after %.2f s', $el));
	session_ok('timeout with a broken watch');
}

ok(!$node->log_contains('terminated by signal'), 'no backend crashed');
ok(!$node->log_contains('PANIC'), 'no PANIC in the server log');
$s->quit;

# --- failover: the first endpoint is dead (nothing listens), the second
# answers: locks work
{
	my $dead = PostgreSQL::Test::Cluster::get_free_port();
	$gw->set_mode('ok');
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET etcd_lock.endpoints = 'http://127.0.0.1:$dead,$gw->{endpoint}'; SELECT pg_reload_conf();");
	my $f = session($node);
	is($f->query_safe('SHOW etcd_lock.endpoints'), "http://127.0.0.1:$dead,$gw->{endpoint}", 'endpoints: a dead port first');
	my $t0 = time;
	is($f->query_safe("SELECT etcd_lock('/failover')"), $FakeGateway::MY_REV, 'failover past a dead endpoint: the lock is granted');
	my $el = time - $t0;
	ok($el < 2, sprintf('failover past a dead endpoint took %.2f s', $el));
	is($f->query_safe("SELECT etcd_unlock('/failover')"), 't', 'and released');
	$f->quit;
}

# --- failover past a hung endpoint (accepts, never answers: a frozen
# member). README: a request that "times out ... moves on to the next".
{
	my $hung = FakeGateway->start(mode => 'stall_all');
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET etcd_lock.endpoints = '$hung->{endpoint},$gw->{endpoint}'; SELECT pg_reload_conf();");
	my $f = session($node);
	$f->query("\\set VERBOSITY verbose");
	my $got = 0;
	my @errs;
	my $t0 = time;
	for (1 .. 3)
	{
		my ($out, $err) = finish_query($f, start_query($f, "SELECT etcd_lock('/hung')"), 30);
		if ($out eq $FakeGateway::MY_REV)
		{
			$got = 1;
			last;
		}
		push @errs, grep { /ERROR|DETAIL/ } split(/\n/, $err);
	}
	my $el = time - $t0;
	note "hung first endpoint: $_" for @errs;
	ok($el < 15, sprintf('hung first endpoint: three attempts end within %.1f s', $el));
	{
		ok($got, 'failover past a hung endpoint: one of three lock calls succeeds');
	}
	$f->quit;
	$hung->stop;
}

# --- a member that hangs while a lock is held: the worker's keepalives
# should move on to the member that answers, so the lease survives
{
	my $a = FakeGateway->start(mode => 'ok');
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET etcd_lock.endpoints = '$a->{endpoint},$gw->{endpoint}'; "
		  . "ALTER SYSTEM SET etcd_lock.lease_ttl = '3s'; SELECT pg_reload_conf();");
	# start from a settled worker: the previous blocks left it failing
	# over from a hung endpoint; wait until it renews through the new first
	# member again (a keepalive reached $a, etcd reachable)
	my $ts = time;
	ok(wait_until(sub {
		scalar($a->requests(since => $ts, path => '/v3/lease/keepalive')) > 0
		  && $node->safe_psql('postgres', 'SELECT etcd_reachable FROM etcd_lock_status') eq 't' }, 20),
		'hung member later: the worker renews through the new endpoints');
	my $h = session($node);
	is($h->query_safe("SELECT etcd_lock('/held')"), $FakeGateway::MY_REV, 'hung member later: lock taken while both members answer');
	my $t0 = time;
	$a->set_mode('stall_all');
	my $m = start_query($h, 'SELECT pg_sleep(7)');
	my ($out, $err) = finish_query($h, $m, 30);
	my $b_keepalives = scalar($gw->requests(since => $t0, path => '/v3/lease/keepalive'));
	note "hung member later: the answering member got $b_keepalives keepalives in 7 s; the statement said: "
	  . join(' | ', grep { /ERROR|DETAIL/ } split(/\n/, $err));
	{
		ok($b_keepalives > 0, 'hung member later: keepalives reach the member that answers');
		unlike($err, qr/lease of this session expired/, 'hung member later: the holder keeps its lease (2 x TTL)');
	}
	eval { $h->quit };
	$a->stop;
}

ok(!$node->log_contains('terminated by signal'), 'still no backend crashed');
$node->stop;
$gw->stop;
done_testing();
