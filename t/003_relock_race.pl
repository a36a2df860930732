# The release-queue race: a backend that releases a lock at ROLLBACK or
# COMMIT (queued for the worker) and takes the same name again at once must
# never hold a key that the queued release then deletes. One session loops
# lock / ROLLBACK / lock and xact-lock / COMMIT on one name while two others
# contend; every critical section is logged and none may overlap.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $etcd = start_etcd();
my $node = etcd_node('race', $etcd);

$node->safe_psql('postgres', q{
CREATE TABLE cs_log (id bigserial, who text, token bigint,
                     t_enter timestamptz, t_exit timestamptz);

-- a critical section: log entry, a short pause, log exit; committed each
-- step so the log survives whatever the caller does next
CREATE PROCEDURE critical(who text, tok bigint) LANGUAGE plpgsql AS $$
DECLARE i bigint;
BEGIN
	INSERT INTO cs_log (who, token, t_enter) VALUES (who, tok, clock_timestamp())
		RETURNING id INTO i;
	COMMIT;
	PERFORM pg_sleep(0.002);
	UPDATE cs_log SET t_exit = clock_timestamp() WHERE id = i;
	COMMIT;
END $$;

-- the racer: take the lock in a transaction that rolls back, take it again
-- at once, work, unlock; then an xact lock committed and taken again
CREATE PROCEDURE racer(n int) LANGUAGE plpgsql AS $$
DECLARE tok bigint; j bigint;
BEGIN
	FOR i IN 1 .. n LOOP
		PERFORM etcd_lock('/race');
		ROLLBACK;
		tok := etcd_lock('/race');
		CALL critical('racer', tok);
		PERFORM etcd_unlock('/race');

		PERFORM etcd_xact_lock('/race');
		COMMIT;
		tok := etcd_xact_lock('/race');
		-- the xact lock ends at COMMIT: log inside this one transaction
		INSERT INTO cs_log (who, token, t_enter)
			VALUES ('racer-xact', tok, clock_timestamp()) RETURNING id INTO j;
		PERFORM pg_sleep(0.002);
		UPDATE cs_log SET t_exit = clock_timestamp() WHERE id = j;
		COMMIT;
	END LOOP;
END $$;

CREATE PROCEDURE contender(who text, n int) LANGUAGE plpgsql AS $$
DECLARE tok bigint;
BEGIN
	FOR i IN 1 .. n LOOP
		tok := etcd_lock('/race');
		CALL critical(who, tok);
		PERFORM etcd_unlock('/race');
	END LOOP;
END $$;
});

my @s = map { session($node) } 1 .. 3;
my @m = (
	start_query($s[0], 'CALL racer(60)'),
	start_query($s[1], "CALL contender('c1', 60)"),
	start_query($s[2], "CALL contender('c2', 60)"));
for my $i (0 .. 2)
{
	my ($out, $err) = finish_query($s[$i], $m[$i], 300);
	is($err, '', "session $i finished without error");
}
$_->quit for @s;

my $n = $node->safe_psql('postgres', 'SELECT count(*) FROM cs_log WHERE t_exit IS NOT NULL');
is($n, 60 * 4, 'every critical section completed');
my $overlaps = $node->safe_psql('postgres', q{
	SELECT count(*) FROM cs_log a JOIN cs_log b
	  ON a.id < b.id AND a.t_enter < b.t_exit AND b.t_enter < a.t_exit});
is($overlaps, 0, 'no two critical sections overlapped');
my $bad_tokens = $node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT token, lag(token) OVER (ORDER BY t_enter) AS prev
	                      FROM cs_log) x
	 WHERE token < prev});
is($bad_tokens, 0, 'fencing tokens never decrease from one holder to the next');
my $contended = $node->safe_psql('postgres',
	q{SELECT count(DISTINCT who) FROM cs_log});
is($contended, 4, 'all sessions took part');

done_testing();
