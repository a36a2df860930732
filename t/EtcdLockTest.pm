# Helpers for etcd_lock's TAP tests: a real etcd on loopback per test file,
# PostgreSQL nodes preloaded with the extension, background sessions, and
# reads of etcd's keys over the JSON gateway (curl).
package EtcdLockTest;

use strict;
use warnings;
use Exporter 'import';
use JSON::PP;
use MIME::Base64;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(start_etcd start_etcd_cluster etcd_leader run_etcd stop_etcd etcd_node session start_query finish_query
  query_done etcd_keys etcd_put wait_until sleep_full sess run ok_sql sess_waiting one_batch);

my @etcd_pids;

# start_etcd(scheme => 'https', args => [...], curl_opts => '...'): a
# single-member etcd with its data in a temp dir; returns a hash with
# endpoint and pid. Stopped (by PID) when the test file ends.
sub start_etcd
{
	my (%opt) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir('etcd');
	my $cport = PostgreSQL::Test::Cluster::get_free_port();
	my $pport = PostgreSQL::Test::Cluster::get_free_port();
	my $ep = ($opt{scheme} // 'http') . "://127.0.0.1:$cport";
	my $etcd = {
		endpoint => $ep,
		peer => "http://127.0.0.1:$pport",    # not the client API
		dir => $dir,
		args => [
			'--name', 'tap', '--data-dir', "$dir/data",
			'--listen-client-urls', $ep, '--advertise-client-urls', $ep,
			'--listen-peer-urls', "http://127.0.0.1:$pport",
			'--initial-advertise-peer-urls', "http://127.0.0.1:$pport",
			'--initial-cluster', "tap=http://127.0.0.1:$pport",
			@{ $opt{args} // [] }
		],
		curl_opts => $opt{curl_opts}
	};
	run_etcd($etcd);
	return $etcd;
}

# spawn_etcd(etcd): starts the etcd process described by the hash (args,
# dir) and remembers its pid; does not wait.
sub spawn_etcd
{
	my ($etcd) = @_;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', "$etcd->{dir}/etcd.log");
		open(STDERR, '>&', \*STDOUT);
		no warnings 'exec';
		exec($etcd->{bin} ? "$etcd->{bin}/etcd" : 'etcd', @{ $etcd->{args} });
		POSIX::_exit(127);
	}
	$etcd->{pid} = $pid;
	push @etcd_pids, $pid;
	return $etcd;
}

# run_etcd(etcd): (re)starts the etcd process described by the hash and
# waits until it answers.
sub run_etcd
{
	my ($etcd) = @_;
	spawn_etcd($etcd);
	for (1 .. 100)
	{
		my $opts = $etcd->{curl_opts} // '';
		last if system("curl -sf -m 1 $opts $etcd->{endpoint}/version >/dev/null 2>&1") == 0;
		usleep(100_000);
	}
	return $etcd;
}

# start_etcd_cluster(n, bin => DIR): n etcd members on loopback forming one
# cluster (DIR/etcd if given, else etcd on PATH); returns a list of member
# hashes (endpoint, pid, ...), once it has a leader.
sub start_etcd_cluster
{
	my ($n, %opt) = @_;
	my @m;
	for my $i (1 .. $n)
	{
		my $dir = PostgreSQL::Test::Utils::tempdir("etcd$i");
		my $cport = PostgreSQL::Test::Cluster::get_free_port();
		my $pport = PostgreSQL::Test::Cluster::get_free_port();
		push @m, { name => "m$i", dir => $dir, endpoint => "http://127.0.0.1:$cport",
			peer => "http://127.0.0.1:$pport", bin => $opt{bin} };
	}
	my $initial = join(',', map { "$_->{name}=$_->{peer}" } @m);
	for my $e (@m)
	{
		$e->{args} = [
			'--name', $e->{name}, '--data-dir', "$e->{dir}/data",
			'--listen-client-urls', $e->{endpoint}, '--advertise-client-urls', $e->{endpoint},
			'--listen-peer-urls', $e->{peer}, '--initial-advertise-peer-urls', $e->{peer},
			'--initial-cluster', $initial, '--initial-cluster-state', 'new',
			'--initial-cluster-token', 'etcd-lock-tap'
		];
		spawn_etcd($e);
	}
	wait_until(sub { defined etcd_leader(\@m) }, 30) or die 'etcd cluster has no leader';
	return @m;
}

# etcd_leader(members): the member that is the leader now, or undef.
sub etcd_leader
{
	my ($m) = @_;
	for my $e (@$m)
	{
		next unless kill 0, $e->{pid};
		my $st = `curl -s -m 1 $e->{endpoint}/v3/maintenance/status -d '{}'`;
		next unless $st =~ /"member_id":"(\d+)".*"leader":"(\d+)"/s;
		return $e if $1 eq $2;
	}
	return undef;
}

# stop_etcd(etcd): stops it (SIGTERM) and waits for it to exit.
sub stop_etcd
{
	my ($etcd) = @_;
	kill 'TERM', $etcd->{pid};
	waitpid($etcd->{pid}, 0);
	@etcd_pids = grep { $_ != $etcd->{pid} } @etcd_pids;
}

END
{
	local $?;    # waitpid must not change the test's exit status
	for my $pid (@etcd_pids)
	{
		kill 'CONT', $pid;
		kill 'TERM', $pid;
		waitpid($pid, 0);
	}
}

# etcd_node(name, etcd, conf...): a started node preloaded with etcd_lock
# (etcd: a hash whose endpoint may be a comma-separated list),
# the extension created in database postgres. allows_streaming => 1 makes it
# a primary that a standby can be built from.
sub etcd_node
{
	my ($name, $etcd, %conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	my $streaming = delete $conf{allows_streaming};
	$node->init($streaming ? (allows_streaming => 1) : ());
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'etcd_lock'");
	$node->append_conf('postgresql.conf', "etcd_lock.endpoints = '$etcd->{endpoint}'");
	$node->append_conf('postgresql.conf', "$_ = '$conf{$_}'") for sort keys %conf;
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION IF NOT EXISTS etcd_lock');
	return $node;
}

# session(node): a background psql session (errors do not stop it).
sub session
{
	my ($node) = @_;
	return $node->background_psql('postgres', on_error_stop => 0);
}

# sess(node): a background session that shows SQLSTATEs in its errors;
# $s->{node} is its node, $s->{pid} its backend's pid
sub sess
{
	my ($node) = @_;
	my $s = session($node);
	finish_query($s, start_query($s, '\set VERBOSITY verbose'), 30);
	$s->{node} = $node;
	$s->{pid} = (finish_query($s, start_query($s, 'SELECT pg_backend_pid()'), 30))[0];
	return $s;
}

# run(s, sql, timeout): runs sql to its end; (stdout, stderr)
sub run
{
	my ($s, $sql, $timeout) = @_;
	return finish_query($s, start_query($s, $sql), $timeout // 30);
}

# ok_sql(s, sql): runs sql, which must not fail; its output
sub ok_sql
{
	my ($s, $sql) = @_;
	my ($out, $err) = run($s, $sql);
	die "unexpected error from <$sql>: $err" if $err =~ /ERROR/;
	return $out;
}

# sess_waiting(s, name): the session's backend waits for name (etcd_locks)
sub sess_waiting
{
	my ($s, $name) = @_;
	return $s->{node}->safe_psql('postgres',
		"SELECT coalesce(bool_or(mode = 'waiting'), false) FROM etcd_locks WHERE pid = $s->{pid} AND name = '$name'")
	  eq 't';
}

my $mark = 0;

# start_query(session, sql): sends sql and returns at once; the returned
# marker lets query_done/finish_query find its end.
sub start_query
{
	my ($s, $sql) = @_;
	$mark++;
	my $m = "QDONE_$mark";
	$s->{stdin} .= "$sql\n;\n\\echo $m\n\\warn $m\n";
	$s->{run}->pump_nb;
	return $m;
}

# query_done(session, marker): has the query finished?
sub query_done
{
	my ($s, $m) = @_;
	$s->{run}->pump_nb;
	return $s->{stdout} =~ /$m\n/ && $s->{stderr} =~ /$m\n/;
}

# finish_query(session, marker, timeout_s): waits for the query's end;
# returns (stdout, stderr) of it and clears them. Dies after timeout_s.
sub finish_query
{
	my ($s, $m, $timeout) = @_;
	$timeout //= 30;
	my $deadline = time + $timeout;
	until (query_done($s, $m))
	{
		die "query $m did not finish within ${timeout}s" if time > $deadline;
		usleep(2_000);
	}
	my ($out, $err) = ($s->{stdout}, $s->{stderr});
	$out =~ s/\n?$m\n//;
	$err =~ s/\n?$m\n//;
	$s->{stdout} = '';
	$s->{stderr} = '';
	return ($out, $err);
}

# wait_until(sub, timeout_s): polls sub every 10 ms; true if it became true.
sub wait_until
{
	my ($cond, $timeout) = @_;
	my $deadline = time + ($timeout // 30);
	while (time < $deadline)
	{
		return 1 if $cond->();
		usleep(10_000);
	}
	return 0;
}

# sleep_full(secs): sleeps secs seconds even if a signal (SIGCHLD from a
# finished helper process, say) wakes the process early.
sub sleep_full
{
	my ($secs) = @_;
	my $end = time + $secs;
	while ((my $left = $end - time) > 0)
	{
		Time::HiRes::sleep($left);
	}
	return;
}

# etcd_keys(etcd, prefix): the keys under prefix, with their values.
sub etcd_keys
{
	my ($etcd, $prefix) = @_;
	my $k = encode_base64($prefix, '');
	my @b = unpack('C*', $prefix);
	$b[-1]++;
	my $end = encode_base64(pack('C*', @b), '');
	my $json = `curl -s $etcd->{endpoint}/v3/kv/range -d '{"key":"$k","range_end":"$end"}'`;
	my %kv;
	my $r = JSON::PP::decode_json($json);
	for my $e (@{ $r->{kvs} // [] })
	{
		$kv{ decode_base64($e->{key}) } = decode_base64($e->{value} // '');
	}
	return \%kv;
}

# etcd_put(etcd, key, value): a plain put (to play another client).
sub etcd_put
{
	my ($etcd, $key, $value) = @_;
	my $k = encode_base64($key, '');
	my $v = encode_base64($value, '');
	system("curl -s $etcd->{endpoint}/v3/kv/put -d '{\"key\":\"$k\",\"value\":\"$v\"}' >/dev/null");
}

# one_batch(fp, [sessions], [sqls], delay_ms): group commit made to happen
# (issue 21): sends sqls->[0] on sessions->[0] while the fault proxy fp
# delays every chunk by delay_ms, so that its request is in flight for
# twice that, then each other one 100 ms apart: they queue behind it and
# go, in that order, as one batch led by sessions->[1]. Returns the
# markers (finish_query each). The delay stays on: end it with
# $fp->delay(0) once the calls are done.
sub one_batch
{
	my ($fp, $sessions, $sqls, $delay_ms) = @_;
	$fp->delay($delay_ms // 300);
	my @m = (start_query($sessions->[0], $sqls->[0]));
	Time::HiRes::usleep(100_000);
	for my $i (1 .. $#$sessions)
	{
		push @m, start_query($sessions->[$i], $sqls->[$i]);
		Time::HiRes::usleep(100_000);
	}
	return @m;
}

1;
