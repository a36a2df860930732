# etcd's own Go client (concurrency.Mutex, the reference program in
# ../shared/reference/go-mutex) and SQL sessions exclude each other on the
# same lock name with the default empty prefix.
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

my $go = $ENV{GO_MUTEX};
if (!$go || !-x $go)
{
	plan skip_all => 'GO_MUTEX (the built reference Go mutex) is not set';
}

my $etcd = start_etcd();
(my $ep = $etcd->{endpoint}) =~ s{^http://}{};
my $node = etcd_node('interop', $etcd);
my $s = session($node);
my $pid = $s->query_safe('SELECT pg_backend_pid()');

# --- Go holds /jobs for 3 s; SQL waits for it
my ($gout, $gerr) = ('', '');
my $t0 = time;
my $h = IPC::Run::start([ $go, '-mode', 'seed', '-lock', '/jobs', '-ep', $ep, '-hold', '3s' ],
	'>', \$gout, '2>', \$gerr);
ok(wait_until(sub { $h->pump_nb; $gout =~ /Acquired lock/ }, 30), 'Go mutex acquired /jobs');
my $m = start_query($s, "SELECT etcd_lock('/jobs')");
usleep(500_000);
ok(!query_done($s, $m), 'SQL etcd_lock waits while the Go client holds /jobs');
finish_query($s, $m, 30);
my $waited = time - $t0;
$h->finish;
like($gout, qr/Done!/, 'Go client released /jobs');
ok($waited >= 2.5, sprintf('SQL got /jobs only after Go released it (%.2f s)', $waited));

# --- SQL holds /jobs; Go waits until SQL unlocks
($gout, $gerr) = ('', '');
$t0 = time;
$h = IPC::Run::start([ $go, '-mode', 'seed', '-lock', '/jobs', '-ep', $ep, '-hold', '0s' ],
	'>', \$gout, '2>', \$gerr);
ok(wait_until(sub { $h->pump_nb; $gout =~ /Waiting to acquire/ }, 30), 'Go client started waiting');
usleep(1_500_000);
$h->pump_nb;
unlike($gout, qr/Acquired lock/, 'Go client waits while SQL holds /jobs');
$s->query_safe("SELECT etcd_unlock('/jobs')");
ok(wait_until(sub { $h->pump_nb; $gout =~ /Acquired lock/ }, 30), 'Go client acquired /jobs after SQL unlocked');
$h->finish;
like($gout, qr/Acquired lock after (\S+)/, "Go waited: $1") if $gout =~ /Acquired lock after (\S+)/;

# --- SQL queued behind Go: FIFO order across clients
($gout, $gerr) = ('', '');
$h = IPC::Run::start([ $go, '-mode', 'seed', '-lock', '/jobs', '-ep', $ep, '-hold', '1s' ],
	'>', \$gout, '2>', \$gerr);
ok(wait_until(sub { $h->pump_nb; $gout =~ /Acquired lock/ }, 30), 'Go holds /jobs again');
is($s->query_safe("SELECT etcd_try_lock('/jobs')"), 'f', 'try_lock fails while Go holds /jobs');
my $keys = etcd_keys($etcd, '/jobs/');
is(scalar(keys %$keys), 1, 'only the Go key exists (failed try leaves none)');
is((values %$keys)[0], '', 'the Go client\'s key has an empty value');
$h->finish;
is($s->query_safe("SELECT etcd_try_lock('/jobs')"), 't', 'try_lock succeeds after Go released');
$s->quit;

# --- issue 18: what our users' starting program does (NewSession,
# NewMutex, Lock, a critical section, Unlock), two copies of it, and SQL
# sessions on two instances, all on one name: they exclude one another and
# are served in the order they queued (the order of their keys' create
# revisions), whoever they are.
{
	my $nb = etcd_node('interop_b', $etcd);
	my $holder = session($node);
	ok($holder->query_safe("SELECT etcd_lock('/fifo')") > 0, 'FIFO: an SQL session on instance A holds /fifo');
	my $nkeys = sub { scalar keys %{ etcd_keys($etcd, '/fifo/') } };
	# go duration (1.5s, 250ms, 2m3.1s) in seconds
	my $secs = sub {
		my ($d, $t) = ($_[0], 0);
		my %u = (ns => 1e-9, 'µs' => 1e-6, us => 1e-6, ms => 1e-3, s => 1, m => 60, h => 3600);
		$t += $1 * $u{$2} while $d =~ /([\d.]+)(ns|µs|us|ms|s|m|h)/g;
		return $t;
	};
	my (@who, %go, %sql);
	my $join = sub {
		my ($name, $start) = @_;
		my $n = $nkeys->();
		$start->();
		push @who, $name;
		ok(wait_until(sub { $nkeys->() > $n }, 20), "FIFO: $name queued (key $n)");
	};
	my $sql_q = "SELECT etcd_lock('/fifo', '60 s') > 0; SELECT extract(epoch FROM clock_timestamp()); "
	  . "SELECT pg_sleep(1); SELECT extract(epoch FROM clock_timestamp()); SELECT etcd_unlock('/fifo');";
	for my $w ([ 'Go copy 1', 'go' ], [ 'SQL on instance B', 'sql', $nb ], [ 'Go copy 2', 'go' ],
		[ 'SQL on instance A', 'sql', $node ])
	{
		my ($name, $kind, $n) = @$w;
		if ($kind eq 'go')
		{
			my $g = { out => '', err => '' };
			$join->($name, sub {
				$g->{t0} = time;
				$g->{h} = IPC::Run::start([ $go, '-mode', 'seed', '-lock', '/fifo', '-ep', $ep, '-hold', '1s' ],
					'>', \$g->{out}, '2>', \$g->{err}, IPC::Run::timeout(90));
			});
			$go{$name} = $g;
		}
		else
		{
			my $q = session($n);
			$join->($name, sub { $sql{$name} = { s => $q, m => start_query($q, $sql_q) } });
		}
	}
	$holder->query_safe("SELECT etcd_unlock('/fifo')");
	my $t_free = time;
	my %span;
	for my $name (keys %go)
	{
		my $g = $go{$name};
		ok(wait_until(sub { $g->{h}->pump_nb; $g->{out} =~ /Done!/ }, 60), "FIFO: $name got the lock and released it");
		$g->{h}->finish;
		my ($d) = $g->{out} =~ /Acquired lock after (\S+)/;
		my $from = $g->{t0} + $secs->($d // '');
		$span{$name} = [ $from, $from + 1 ];
	}
	for my $name (keys %sql)
	{
		my ($out) = finish_query($sql{$name}{s}, $sql{$name}{m}, 60);
		my @l = split /\n/, $out;
		is($l[0], 't', "FIFO: $name got the lock");
		$span{$name} = [ $l[1], $l[3] ];
		$sql{$name}{s}->quit;
	}
	my @order = sort { $span{$a}[0] <=> $span{$b}[0] } keys %span;
	is(join(', ', @order), join(', ', @who), 'FIFO: served in the order they queued (Go, SQL on B, Go, SQL on A)');
	my $overlap = 0;
	for my $i (1 .. $#order)
	{
		# the previous holder's end and the next one's start (0.05 s for
		# the clocks of two processes read at different moments)
		$overlap++ if $span{ $order[$i] }[0] < $span{ $order[ $i - 1 ] }[1] - 0.05;
	}
	is($overlap, 0, 'FIFO: no two critical sections overlap');
	note join('; ', map { sprintf('%s %.2f-%.2f', $_, $span{$_}[0] - $t_free, $span{$_}[1] - $t_free) } @order);
	is($nkeys->(), 0, 'FIFO: no key left');
	$holder->quit;
	$nb->stop;
}

done_testing();
