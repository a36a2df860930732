# etcd's own command-line client as a peer, the way an operator uses it
# from a shell: `etcdctl lock NAME -- CMD` and `etcdctl elect NAME VALUE`
# against SQL locks and elections, both ways, with a prefix set
# (issue 18; issue 23 item 1: which name etcdctl must use).
# A SQL name N under etcd_lock.prefix P is etcd's mutex/election prefix
# P || N: with P = '/etcd_lock' and N = '/jobs', `etcdctl lock
# /etcd_lock/jobs`. The prefix is prepended verbatim: '/etcd_lock/' makes
# '/etcd_lock//jobs'.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $etcd = start_etcd();
my $node = etcd_node('ctl', $etcd, 'etcd_lock.prefix' => '/etcd_lock');
my @ctl = ('etcdctl', '--endpoints', $etcd->{endpoint});
$ENV{ETCDCTL_API} = 3;
my $s = sess($node);

# --- etcd_lock_key (1.2) names the key range, the README's example: the
# name etcdctl and Go use is it without the trailing slash
is(ok_sql($s, "SELECT etcd_lock_key('/jobs')"), '/etcd_lock/jobs/',
	"etcd_lock_key('/jobs') under prefix '/etcd_lock' is /etcd_lock/jobs/ (README)");

# --- SQL holds /jobs: `etcdctl lock /etcd_lock/jobs` waits for it
{
	my $tok = ok_sql($s, "SELECT etcd_lock('/jobs')");
	ok($tok > 0, 'SQL holds /jobs');
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start([ @ctl, 'lock', '/etcd_lock/jobs', '--', 'echo', 'GOT-IT' ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(60));
	sleep 2;
	$h->pump_nb;
	unlike($out, qr/GOT-IT/, 'etcdctl lock /etcd_lock/jobs waits while SQL holds /jobs');
	ok_sql($s, "SELECT etcd_unlock('/jobs')");
	ok(wait_until(sub { $h->pump_nb; $out =~ /GOT-IT/ }, 20), 'etcdctl gets the lock once SQL releases it');
	$h->finish;
	is(scalar(keys %{ etcd_keys($etcd, '/etcd_lock/jobs') }), 0, 'no key left');
}

# --- etcdctl holds the lock (its command runs 4 s): SQL waits for it
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start([ @ctl, 'lock', '/etcd_lock/jobs', '--', 'sh', '-c', 'echo HOLDING; sleep 4' ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(60));
	ok(wait_until(sub { $h->pump_nb; $out =~ /HOLDING/ }, 20), 'etcdctl holds /etcd_lock/jobs');
	is(ok_sql($s, "SELECT etcd_try_lock('/jobs')"), 'f', 'SQL try-lock on /jobs fails while etcdctl holds it');
	my $t0 = time;
	my $tok = ok_sql($s, "SELECT etcd_lock('/jobs', '30 s')");
	my $el = time - $t0;
	ok($tok > 0 && $el > 1, sprintf('SQL etcd_lock gets /jobs after etcdctl released it (waited %.1f s)', $el));
	$h->finish;
	ok_sql($s, "SELECT etcd_unlock('/jobs')");
}

# --- the prefix is prepended verbatim: a trailing slash doubles it
{
	my $t = sess($node);
	ok_sql($t, "SET etcd_lock.prefix = '/etcd_lock/'");
	my $range = ok_sql($t, "SELECT etcd_lock_key('/dbl')");
	is($range, '/etcd_lock//dbl/', "etcd_lock_key('/dbl') under prefix '/etcd_lock/' shows the doubled slash");
	ok_sql($t, "SELECT etcd_lock('/dbl')");
	my @k = keys %{ etcd_keys($etcd, $range) };
	is(scalar(@k), 1, "prefix '/etcd_lock/' and name '/dbl': the key is under $range");
	# etcdctl with the name etcd_lock_key gives (slash dropped) waits for SQL
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start([ @ctl, 'lock', $range =~ s{/$}{}r, '--', 'echo', 'GOT-IT' ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(60));
	sleep 2;
	$h->pump_nb;
	unlike($out, qr/GOT-IT/, 'etcdctl lock /etcd_lock//dbl waits while SQL holds /dbl');
	ok_sql($t, "SELECT etcd_unlock_all()");
	ok(wait_until(sub { $h->pump_nb; $out =~ /GOT-IT/ }, 20), '... and gets it once SQL releases it');
	$h->finish;
	$t->quit;
}

# --- elections: etcdctl elect leads, SQL sees it and waits; then SQL
# leads and `etcdctl elect -l` observes the SQL leader's value
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start([ @ctl, 'elect', '/etcd_lock/el', 'ctl-leader' ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(120));
	ok(wait_until(sub { $h->pump_nb; $out =~ /ctl-leader/ }, 20), 'etcdctl elect leads /etcd_lock/el');
	is(ok_sql($s, "SELECT value FROM etcd_leader('/el')"), 'ctl-leader', 'etcd_leader shows the etcdctl candidate');
	my ($o2, $e2) = run($s, "SELECT etcd_campaign('/el', 'sql-leader', '1 s')");
	like($e2, qr/55P03/, 'a SQL campaign waits behind the etcdctl leader (times out: 55P03)');
	$h->signal('INT');    # etcdctl resigns on SIGINT
	$h->finish;
	my $tok = ok_sql($s, "SELECT etcd_campaign('/el', 'sql-leader', '20 s')");
	ok($tok > 0, 'SQL leads once etcdctl resigned');
	my ($lout, $lerr) = ('', '');
	my $l = IPC::Run::start([ @ctl, 'elect', '-l', '/etcd_lock/el' ],
		'>', \$lout, '2>', \$lerr, IPC::Run::timeout(60));
	ok(wait_until(sub { $l->pump_nb; $lout =~ /sql-leader/ }, 20), 'etcdctl elect -l observes the SQL leader');
	$l->kill_kill;
	ok_sql($s, "SELECT etcd_resign('/el')");
	ok(wait_until(sub { scalar(keys %{ etcd_keys($etcd, '/etcd_lock/el') }) == 0 }, 20), 'no election key left');
}

$s->quit;
ok(!$node->log_contains('terminated by signal'), 'no backend crashed');
done_testing();
