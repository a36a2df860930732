# A 3-member etcd cluster: kill the leader while 8 sessions take turns on
# one lock. Lock traffic continues through the other members (failover of
# requests, watches and keepalives), and no two holders ever overlap.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my @members = start_etcd_cluster(3);
my $eps = join(',', map { $_->{endpoint} } @members);
my $node = etcd_node('cluster', { endpoint => $eps }, 'etcd_lock.request_timeout' => '2s');
$node->safe_psql('postgres', q{
CREATE TABLE cs_log (id bigserial, who int, token bigint, t_enter timestamptz, t_exit timestamptz);
CREATE TABLE errors (who int, at timestamptz, msg text);
CREATE PROCEDURE worker(me int, n int) LANGUAGE plpgsql AS $$
DECLARE tok bigint; i bigint; done int := 0; tries int := 0;
BEGIN
	WHILE done < n AND tries < n * 50 LOOP
		tries := tries + 1;
		BEGIN
			tok := etcd_lock('/cluster', '20 s');
		EXCEPTION WHEN others THEN
			INSERT INTO errors VALUES (me, clock_timestamp(), SQLERRM);
			COMMIT;
			PERFORM pg_sleep(0.05);
			CONTINUE;
		END;
		INSERT INTO cs_log (who, token, t_enter) VALUES (me, tok, clock_timestamp()) RETURNING id INTO i;
		COMMIT;
		PERFORM pg_sleep(0.005);
		UPDATE cs_log SET t_exit = clock_timestamp() WHERE id = i;
		COMMIT;
		-- an unlock that etcd did not confirm still ends the hold: the
		-- session forgets the lock and the worker finishes the release
		BEGIN
			PERFORM etcd_unlock('/cluster');
		EXCEPTION WHEN others THEN
			INSERT INTO errors VALUES (me, clock_timestamp(), 'unlock: ' || SQLERRM);
			COMMIT;
		END;
		done := done + 1;
	END LOOP;
END $$;
});

# --- a member that accepts connections but never answers (frozen) is
# listed first: requests move on to the next member within the timeout
{
	my $leader0 = etcd_leader(\@members);
	my ($follower) = grep { $_ != $leader0 } @members;
	my $n2 = etcd_node('frozen_first', { endpoint => "$follower->{endpoint},$leader0->{endpoint}" },
		'etcd_lock.request_timeout' => '2s');
	kill 'STOP', $follower->{pid};
	my $t0 = time;
	my ($rc, $out, $err) = $n2->psql('postgres',
		"SELECT etcd_lock('/frozen') > 0, etcd_unlock('/frozen')");
	my $el = time - $t0;
	kill 'CONT', $follower->{pid};
	is($out, 't|t', 'lock and unlock succeed with a frozen member listed first');
	ok($el < 2.5, sprintf('failover took %.2f s, within the 2 s request timeout (+slack)', $el));
	$n2->stop;
}

my $n = 40;
my @s = map { session($node) } 1 .. 8;
my @m = map { start_query($s[$_], "CALL worker($_, $n)") } 0 .. 7;

ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM cs_log') >= 60 }, 120),
	'lock traffic runs on the 3-member cluster');
my $leader = etcd_leader(\@members);
ok(defined $leader, "found the leader ($leader->{name})");
my $killed_at = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
kill 'KILL', $leader->{pid};
waitpid($leader->{pid}, 0);
note "killed the leader $leader->{name} at $killed_at";

for my $i (0 .. 7)
{
	my ($out, $err) = finish_query($s[$i], $m[$i], 300);
	is($err, '', "session $i finished");
}
$_->quit for @s;

is($node->safe_psql('postgres', 'SELECT count(*) FROM cs_log WHERE t_exit IS NOT NULL'), 8 * $n,
	'every session completed all its critical sections');
my $after = $node->safe_psql('postgres', "SELECT count(*) FROM cs_log WHERE t_enter > '$killed_at'");
ok($after >= 50, "lock traffic continued after the leader died ($after critical sections)");
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM cs_log a JOIN cs_log b
	  ON a.id < b.id AND a.t_enter < b.t_exit AND b.t_enter < a.t_exit}), '0',
	'no two holders at once');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT token, lag(token) OVER (ORDER BY t_enter) AS prev FROM cs_log) x
	 WHERE token <= prev}), '0', 'fencing tokens strictly increase from holder to holder');
my $errs = $node->safe_psql('postgres', 'SELECT count(*) FROM errors');
note "lock calls that failed during the election and were retried: $errs";
note $node->safe_psql('postgres', 'SELECT msg, count(*) FROM errors GROUP BY 1 ORDER BY 2 DESC LIMIT 5');
ok(!$node->log_contains('terminated by signal'), 'no backend crashed');

done_testing();
