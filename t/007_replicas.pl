# Mutual-exclusion checker across replicas: a primary and a streaming hot
# standby on one etcd; 4 sessions on each take the same lock in a loop and,
# inside it, do an unprotected read-modify-write of a counter kept outside
# both instances (a file the harness owns) and log enter/exit times. At the
# end: no overlapping critical sections and no lost increments. Run twice:
# once clean, once with etcd restarted repeatedly during the run.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $etcd = start_etcd();
my $primary = etcd_node('primary', $etcd, 'etcd_lock.request_timeout' => '2s',
	allows_streaming => 1);
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;

my $dir = PostgreSQL::Test::Utils::tempdir('counter');
chmod 0777, $dir;

# The worker: n critical sections; etcd errors (etcd restarting) are retried.
# It only reads the database (it runs on the standby too); the counter and
# the log live in files.
$primary->safe_psql('postgres', q{
CREATE PROCEDURE mx_worker(who text, n int, dir text) LANGUAGE plpgsql AS $$
DECLARE
	tok bigint; v bigint; t0 text; log text[] := '{}'; done int := 0; tries int := 0;
	counter text := dir || '/counter';
BEGIN
	WHILE done < n AND tries < n * 100 LOOP
		tries := tries + 1;
		BEGIN
			tok := etcd_lock('/mx', '30 s');
		EXCEPTION WHEN others THEN
			PERFORM pg_sleep(0.05);
			CONTINUE;
		END;
		t0 := clock_timestamp()::text;
		v := trim(pg_read_file(counter))::bigint;
		PERFORM pg_sleep(0.001);
		EXECUTE format('COPY (SELECT %s) TO %L', v + 1, counter);
		log := log || format('%s|%s|%s|%s', who, tok, t0, clock_timestamp());
		-- an unlock etcd did not confirm still ends the hold (the worker
		-- finishes the release): no retry
		BEGIN
			PERFORM etcd_unlock('/mx');
		EXCEPTION WHEN others THEN
			NULL;
		END;
		done := done + 1;
	END LOOP;
	EXECUTE format('COPY (SELECT unnest(%L::text[])) TO %L', log, dir || '/log_' || who);
END $$;
});
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'standby is a hot standby');

sub run_round
{
	my ($label, $n, $faults) = @_;
	unlink glob("$dir/log_*");
	open(my $fh, '>', "$dir/counter") or die;
	print $fh "0\n";
	close $fh;
	chmod 0666, "$dir/counter";

	my @s;
	my @m;
	for my $i (1 .. 4)
	{
		for my $node ([ $primary, 'p' ], [ $standby, 's' ])
		{
			my $s = session($node->[0]);
			push @s, $s;
			push @m, start_query($s, "CALL mx_worker('$node->[1]$i', $n, '$dir')");
		}
	}
	my $restarts = 0;
	if ($faults)
	{
		# restart etcd a few times while the sessions run
		for (1 .. 3)
		{
			usleep(700_000);
			stop_etcd($etcd);
			usleep(300_000);
			run_etcd($etcd);
			$restarts++;
		}
	}
	for my $i (0 .. $#s)
	{
		my ($out, $err) = finish_query($s[$i], $m[$i], 600);
		is($err, '', "$label: session $i finished");
	}
	$_->quit for @s;

	open($fh, '<', "$dir/counter") or die;
	my $count = <$fh>;
	close $fh;
	chomp $count;
	is($count, 8 * $n, "$label: no lost increments ($count of " . 8 * $n . ")");

	my @cs;
	for my $f (glob("$dir/log_*"))
	{
		open($fh, '<', $f) or die;
		while (<$fh>)
		{
			chomp;
			my ($who, $tok, $in, $out) = split /\|/;
			push @cs, [ $who, $tok, $in, $out ];
		}
		close $fh;
	}
	is(scalar(@cs), 8 * $n, "$label: every critical section logged");
	my %by = map { $_->[0] => 1 } @cs;
	ok((grep { /^p/ } keys %by) && (grep { /^s/ } keys %by), "$label: both primary and standby took part");

	# compare as timestamps inside PostgreSQL
	my $values = join(',', map { "('$_->[0]',$_->[1],'$_->[2]'::timestamptz,'$_->[3]'::timestamptz)" } @cs);
	my $overlaps = $primary->safe_psql('postgres', qq{
		WITH cs(who, tok, t_in, t_out) AS (VALUES $values)
		SELECT count(*) FROM cs a JOIN cs b
		  ON (a.who, a.t_in) < (b.who, b.t_in) AND a.t_in < b.t_out AND b.t_in < a.t_out});
	is($overlaps, '0', "$label: no overlapping critical sections across primary and standby");
	my $tokens = $primary->safe_psql('postgres', qq{
		WITH cs(who, tok, t_in, t_out) AS (VALUES $values)
		SELECT count(*) FROM (SELECT tok, lag(tok) OVER (ORDER BY t_in) AS prev FROM cs) x
		 WHERE tok <= prev});
	is($tokens, '0', "$label: fencing tokens strictly increase");
	note "$label: etcd restarts during the run: $restarts" if $faults;
}

run_round('clean', 40, 0);
run_round('etcd restarts', 60, 1);
ok(!$primary->log_contains('terminated by signal') && !$standby->log_contains('terminated by signal'),
	'no backend crashed');

done_testing();
