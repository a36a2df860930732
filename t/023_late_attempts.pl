# The late attempt of a resent request (issue 20, found by the SPIN model:
# spec/README.md "Found 1"): the gateway resends a request whose attempt
# timed out to the next endpoint, and that first attempt may still be
# applied by etcd after the resend was answered. An acquire's late first
# attempt, landing after the lock was released, put the key again under the
# session's live lease: a key nobody held, the oldest of its name, blocking
# every other session until this one ended. Version-independent (the
# gateway's failover), so it runs in the full suite only. Every block
# failed on the code before its fix.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use FaultProxy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $etcd = start_etcd();
my $b = etcd_node('late_b', $etcd);

# the keys under P (decoded key => value)
sub keys_under { return etcd_keys($etcd, $_[0]) }

# --- issue 20, found by the model (spec/README.md, "Found 1"): the gateway
# resends a request whose first attempt timed out to the next endpoint, and
# that first attempt may still be applied later. A resent acquire's late
# first attempt, landing after the lock was released, put the key again
# under the session's live lease: a key nobody held, the oldest of its
# name, blocking everyone until the session ended. Endpoints: two proxies
# to one etcd; the one the backend uses delivers the next txn 3 s late and
# loses its reply, so the gateway resends it through the other (a backend
# stays with the endpoint that answered last, so the cases alternate).
# Three releases: etcd_unlock (synchronous), COMMIT (the worker), and a
# try-lock answered "taken" whose late first attempt finds the name free.
# Now a release confirmed while an attempt may still land has the worker
# read the key again once it must have landed, and delete what it finds.
{
	my @fp = (FaultProxy->start($etcd->{endpoint}), FaultProxy->start($etcd->{endpoint}));
	my $nr = etcd_node('rev_resent', { endpoint => join(',', map { $_->endpoint } @fp) },
		'etcd_lock.lease_ttl' => '30s', 'etcd_lock.request_timeout' => '2s');
	my $s = sess($nr);
	my $o = sess($b);
	ok_sql($s, "SELECT etcd_lock('/resent/warm'); SELECT etcd_unlock('/resent/warm')");    # the lease
	my $mine = sub { my $n = shift; scalar(grep { m{^/resent/$n/} } keys %{ keys_under("/resent/$n/") }) };
	my $fo = sub { $nr->safe_psql('postgres', 'SELECT failovers FROM etcd_lock_status') };
	my $lates = sub { my $n = () = $_[0]->log_text =~ /late request forwarded/g; $n };

	# 1: etcd_lock, then etcd_unlock (the backend is on the first proxy)
	my $f0 = $fo->();
	$fp[0]->drop_reply('/v3/kv/txn', 'late=3000');
	is(ok_sql($s, "SELECT etcd_lock('/resent/x') > 0"), 't', '20.found2: the lock is taken through the second endpoint');
	cmp_ok($fo->(), '>', $f0, '20.found2: ... after a failover');
	is(ok_sql($s, "SELECT etcd_unlock('/resent/x')"), 't', '20.found2: etcd_unlock confirms the release');
	ok(wait_until(sub { $lates->($fp[0]) == 1 }, 15), '20.found2: the first attempt reaches etcd 3 s late');
	ok(wait_until(sub { $mine->('x') }, 5), '20.found2: ... and puts the key again under the live lease');
	ok(wait_until(sub { !$mine->('x') }, 40),
		'20.found2: the late key is removed while the session lives (before: it stayed)');
	is(ok_sql($o, "SELECT etcd_try_lock('/resent/x')"), 't', '20.found2: another session takes the name');
	ok_sql($o, "SELECT etcd_unlock_all()");

	# 2: a transaction lock released by COMMIT (the worker deletes it);
	# the backend is on the second proxy now
	$fp[1]->drop_reply('/v3/kv/txn', 'late=3000');
	is(ok_sql($s, "BEGIN; SELECT etcd_xact_lock('/resent/y') > 0; COMMIT;"), 't',
		'20.found2: a transaction lock, taken after a failover');
	ok(wait_until(sub { $lates->($fp[1]) == 1 }, 15), '20.found2: its first attempt lands late');
	ok(wait_until(sub { $mine->('y') }, 5), '20.found2: ... putting the key again');
	ok(wait_until(sub { !$mine->('y') }, 40), '20.found2: the worker removes it (before: it stayed)');

	# 3: a try-lock answered "taken"; its late first attempt finds the name
	# free (the backend is on the first proxy again)
	ok_sql($o, "SELECT etcd_lock('/resent/z')");
	$fp[0]->drop_reply('/v3/kv/txn', 'late=3000');
	is(ok_sql($s, "SELECT etcd_try_lock('/resent/z')"), 'f', '20.found2: a try-lock, resent, finds the name taken');
	ok_sql($o, "SELECT etcd_unlock('/resent/z')");
	ok(wait_until(sub { $lates->($fp[0]) == 2 }, 15), '20.found2: its first attempt lands late');
	ok(wait_until(sub { $mine->('z') }, 5), '20.found2: ... and takes the free name for a session that was told "taken"');
	ok(wait_until(sub { !$mine->('z') }, 40), '20.found2: the late key is removed (before: it stayed)');
	is(ok_sql($o, "SELECT etcd_try_lock('/resent/z')"), 't', '20.found2: another session takes the name');
	ok_sql($o, "SELECT etcd_unlock_all()");

	# 4: a campaign, resent; resigned; campaigning again at once must wait
	# for the read of the late attempt (an election key is never adopted: a
	# late one would carry the old value), not fail (before: "an earlier
	# release of it has not reached etcd" after 2 x request_timeout)
	$fp[1]->drop_reply('/v3/kv/txn', 'late=3000');
	ok(ok_sql($s, "SELECT etcd_campaign('/resent/e', 'v1')") > 0, '20.found2: a campaign won after a failover');
	is(ok_sql($s, "SELECT etcd_resign('/resent/e')"), 't', '20.found2: ... resigned');
	my ($out, $err) = run($s, "SELECT etcd_campaign('/resent/e', 'v2', '60 s') > 0", 90);
	is($out . $err, 't', '20.found2: campaigning again waits for the late attempt, then wins');
	is(ok_sql($o, "SELECT value FROM etcd_leader('/resent/e')"), 'v2', '20.found2: ... with the new value');
	ok_sql($s, "SELECT etcd_resign('/resent/e')");
	ok(wait_until(sub { !%{ keys_under('/resent/') } }, 30), '20.found2: no key left');
	$_->quit for $s, $o;
	$nr->stop;
	$_->stop for @fp;
}

done_testing();
