# The defects two outside reviews of 1.1 found (issues 22 and 24), each
# reproduced as it was reported; every block names its item. Each failed
# on the code before its fix.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $etcd = start_etcd();
my $a = etcd_node('rev_a', $etcd);
my $b = etcd_node('rev_b', $etcd);

# the keys under P (decoded key => value)
sub keys_under { return etcd_keys($etcd, $_[0]) }

# --- issue 22 item 1: a multi-lock on a name this session campaigns for is
# refused before anything is sent; the election key stays, and nobody else
# becomes leader. Before: the give-up deleted the election key (another
# session then won the election while this one still said it led), and
# with an empty value the multi-lock adopted the election key as a lock.
{
	my $s = sess($a);
	my $o = sess($b);
	my $tok = ok_sql($s, "SELECT etcd_campaign('/e1', 'v1')");
	my ($out, $err) = run($s, "SELECT etcd_lock_many(ARRAY['/e1'], '2 s')");
	like($err, qr/42809/, '22.1: etcd_lock_many on a name this session campaigns for: 42809');
	($out, $err) = run($s, "SELECT etcd_try_lock_many(ARRAY['/free1', '/e1'])");
	like($err, qr/42809/, '22.1: ... also as a try, with another name');
	sleep 1.5;    # the worker would have sent a queued give-up by now
	my $k = keys_under('/e1/');
	is(scalar(keys %$k), 1, '22.1: the election key is still in etcd');
	is((values %$k)[0], 'v1', '22.1: ... with the candidate value');
	is(scalar(keys %{ keys_under('/free1/') }), 0, '22.1: the other name of the refused call has no key');
	is(ok_sql($o, "SELECT etcd_try_campaign('/e1', 'v2')"), 'f', '22.1: another session does not win the election');
	is(ok_sql($s, "SELECT token = $tok AND is_mine FROM etcd_leader('/e1')"), 't', '22.1: this session is still the leader in etcd');

	# an empty candidate value (as a Go client's mutex key would look)
	my $tok2 = ok_sql($s, "SELECT etcd_campaign('/e2', '')");
	($out, $err) = run($s, "SELECT etcd_lock_many(ARRAY['/e2'], '2 s')");
	like($err, qr/42809/, '22.1: empty campaign value: the multi-lock is refused (not adopted)');
	($out, $err) = run($s, "SELECT etcd_unlock('/e2')");
	sleep 1;
	is(scalar(keys %{ keys_under('/e2/') }), 1, '22.1: empty campaign value: the election key survives an etcd_unlock');
	is(ok_sql($o, "SELECT etcd_try_campaign('/e2', 'v2')"), 'f', '22.1: empty campaign value: nobody else wins');
	ok_sql($s, "SELECT etcd_resign('/e1'), etcd_resign('/e2')");
	ok(wait_until(sub { !%{ keys_under('/e1/') } && !%{ keys_under('/e2/') } }, 10), '22.1: resign removes both election keys');
	$s->quit;
	$o->quit;
}

# --- issue 22 item 3: a queued release is taken back only as the kind it
# was. A rolled-back xact lock's release, taken back by a campaign on the
# same name, left the lock's value under the election (etcd_leader showed
# it, other candidates got 42809). Races the worker: repeated.
{
	my $s = sess($a);
	my $bad = 0;
	my $n = 12;
	for my $i (1 .. $n)
	{
		ok_sql($s, "BEGIN; SAVEPOINT p; SELECT etcd_xact_lock('/tb$i'); ROLLBACK TO p; "
			  . "SELECT etcd_campaign('/tb$i', 'cand$i'); COMMIT;");
		my $k = keys_under("/tb$i/");
		my @v = values %$k;
		$bad++ unless @v == 1 && $v[0] eq "cand$i";
	}
	is($bad, 0, "22.3: after a rolled-back lock, a campaign's key carries the candidate's value ($bad of $n did not)");
	is(ok_sql($s, "SELECT value FROM etcd_leader('/tb1')"), 'cand1', '22.3: etcd_leader shows the candidate value');
	ok_sql($s, "SELECT etcd_resign('/tb$_')") for 1 .. $n;
	$s->quit;
}

ok(!$a->log_contains('terminated by signal') && !$b->log_contains('terminated by signal'), 'no backend crashed');
done_testing();
