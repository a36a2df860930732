# A rolling upgrade of etcd under load: a 3-member cluster starts on the
# older release (ETCD_UPGRADE_FROM, a directory with etcd in it: 3.6), and
# its members are replaced one at a time by the newer one (ETCD_UPGRADE_TO:
# 3.7) — etcd's documented procedure: stop a member, start the new binary on
# the same data directory with the same flags, wait until it is healthy,
# go on with the next. Meanwhile sessions on two PostgreSQL instances, whose
# endpoints list the members in opposite orders (so their requests are
# answered by old and new members in turn), take exclusive locks, permits
# of a semaphore of 2 and shared locks beside an exclusive one, in a loop.
#
# etcd 3.7.0-3.7.3 list keys-only ranges without `lease` (etcd issue
# #22209): before the fix, sessions were inside one lock together as soon
# as a 3.7 member answered. Checked at the end, from each section's
# [enter, exit] (exit taken before a token check that still found the lock
# held, so the lock was held over the whole interval):
#   (1) never two sections on /ru/x at once, never more than 2 on the
#       semaphore /ru/sem, an exclusive section on /ru/rw overlaps nothing;
#   (2) an unprotected counter per exclusive name counts every section
#       (no lost increment);
#   (3) no lock call failed or timed out (every waiter served), no section
#       lost its lock, every session got in, in each phase of the upgrade;
#   (4) every member runs the new release at the end, no key is left.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my ($from, $to) = ($ENV{ETCD_UPGRADE_FROM}, $ENV{ETCD_UPGRADE_TO});
if (!$from || !$to || !-x "$from/etcd" || !-x "$to/etcd")
{
	plan skip_all => 'ETCD_UPGRADE_FROM / ETCD_UPGRADE_TO (directories with etcd) not set; scripts/test.sh sets them';
}
my ($vfrom) = `$from/etcd --version` =~ /etcd Version: (\S+)/;
my ($vto) = `$to/etcd --version` =~ /etcd Version: (\S+)/;
note "rolling upgrade etcd $vfrom -> $vto";

my $PHASE_SECS = 4;    # load before, between and after member replacements

my @m = start_etcd_cluster(3, bin => $from);
my %conf = ('etcd_lock.lease_ttl' => '10s', 'etcd_lock.request_timeout' => '5s');
my $na = etcd_node('ru_a', { endpoint => join(',', map { $_->{endpoint} } @m) }, %conf);
my $nb = etcd_node('ru_b', { endpoint => join(',', map { $_->{endpoint} } reverse @m) }, %conf);

my $dir = PostgreSQL::Test::Utils::tempdir('rolling');
chmod 0777, $dir;
for my $c (qw(x rw))
{
	open(my $fh, '>', "$dir/counter_$c") or die;
	print $fh "0\n";
	close $fh;
	chmod 0666, "$dir/counter_$c";
}

# ru_worker: sections until the stop file appears (or max_secs pass); each
# logged as S|who|kind|token|t_in|t_out|held|wrote, each failed call as
# F|who|kind|stage|t|||sqlstate message / detail (a failed unlock after a
# complete section logs both). Exclusive sections bump their name's
# counter with an unprotected read-modify-write.
my $worker = q{
CREATE PROCEDURE ru_worker(who text, kind text, dir text, max_secs int)
LANGUAGE plpgsql AS $$
DECLARE
	nm text := CASE kind WHEN 'x' THEN '/ru/x' WHEN 'sem' THEN '/ru/sem' ELSE '/ru/rw' END;
	f text := dir || '/counter_' || CASE kind WHEN 'x' THEN 'x' ELSE 'rw' END;
	tok bigint; t_in float8; t_out float8; held bool; wrote bool; v bigint;
	stage text; det text;
	log text[] := '{}';
	stop_at timestamptz := clock_timestamp() + make_interval(secs => max_secs);
BEGIN
	WHILE clock_timestamp() < stop_at AND pg_stat_file(dir || '/stop', true) IS NULL LOOP
		BEGIN
			wrote := false; held := NULL; t_in := NULL; t_out := NULL; stage := 'lock';
			tok := CASE kind WHEN 'sem' THEN etcd_semaphore(nm, 2, '60 s')
				WHEN 'sh' THEN etcd_lock_shared(nm, '60 s') ELSE etcd_lock(nm, '60 s') END;
			t_in := extract(epoch FROM clock_timestamp());
			IF kind IN ('x', 'rwx') THEN
				v := trim(pg_read_file(f))::bigint;
				PERFORM pg_sleep(0.005 + random() * 0.02);
				EXECUTE format('COPY (SELECT %s) TO %L', v + 1, f);
				wrote := true;
			ELSE
				PERFORM pg_sleep(0.005 + random() * 0.02);
			END IF;
			t_out := extract(epoch FROM clock_timestamp());
			held := etcd_lock_token(nm) IS NOT DISTINCT FROM tok;
			stage := 'unlock';
			IF kind = 'sem' THEN PERFORM etcd_unlock_semaphore(nm);
			ELSIF kind = 'sh' THEN PERFORM etcd_unlock_shared(nm);
			ELSE PERFORM etcd_unlock(nm);
			END IF;
			log := log || format('S|%s|%s|%s|%s|%s|%s|%s', who, kind, tok, t_in, t_out, held, wrote);
		EXCEPTION WHEN others THEN
			GET STACKED DIAGNOSTICS det = PG_EXCEPTION_DETAIL;
			IF stage = 'unlock' THEN
				-- the section itself was complete: keep it
				log := log || format('S|%s|%s|%s|%s|%s|%s|%s', who, kind, tok, t_in, t_out, held, wrote);
			END IF;
			log := log || format('F|%s|%s|%s|%s|||%s', who, kind, stage, extract(epoch FROM clock_timestamp()),
				SQLSTATE || ' ' || left(translate(SQLERRM || ' / ' || coalesce(det, ''), E'|\n', '  '), 400));
			PERFORM pg_sleep(0.05);
		END;
	END LOOP;
	EXECUTE format('COPY (SELECT unnest(%L::text[])) TO %L', log, dir || '/log_' || who);
END $$;
};
$_->safe_psql('postgres', $worker) for ($na, $nb);

my @kinds = qw(x x sem sem sem sh rwx);
my @runs;
for my $node ($na, $nb)
{
	for my $i (0 .. $#kinds)
	{
		my $who = $node->name . "_$i";
		my $s = session($node);
		push @runs, { s => $s, who => $who, kind => $kinds[$i],
			q => start_query($s, "CALL ru_worker('$who', '$kinds[$i]', '$dir', 300)") };
	}
}

# the phases: [name, start, end] of the run, by wall clock
my @phases;
my $t = time;
sleep $PHASE_SECS;
push @phases, ["all $vfrom", $t, time];
for my $i (0 .. $#m)
{
	my $e = $m[$i];
	stop_etcd($e);
	$e->{bin} = $to;
	run_etcd($e);
	ok(wait_until(sub { system("curl -sf -m 1 $e->{endpoint}/health >/dev/null 2>&1") == 0 && defined etcd_leader(\@m) }, 60),
		"member $e->{name} replaced by $vto and healthy");
	$t = time;
	sleep $PHASE_SECS;
	push @phases, [($i + 1) . " of 3 on $vto", $t, time];
}
open(my $sf, '>', "$dir/stop") or die;
close $sf;
for my $r (@runs)
{
	my ($out, $err) = finish_query($r->{s}, $r->{q}, 120);
	is($err // '', '', "$r->{who} ($r->{kind}): the worker ended without error");
	$r->{s}->quit;
}

for my $e (@m)
{
	like(`curl -s -m 2 $e->{endpoint}/version`, qr/"etcdserver":"\Q$vto\E"/, "$e->{name} runs $vto");
}

# the sections
my (@sec, @fail);
for my $r (@runs)
{
	open(my $fh, '<', "$dir/log_$r->{who}") or die "no log from $r->{who}";
	while (my $l = <$fh>)
	{
		chomp $l;
		my @f = split(/\|/, $l, -1);
		if ($f[0] eq 'S')
		{
			push @sec, { who => $f[1], kind => $f[2], tok => $f[3], in => $f[4], out => $f[5],
				held => $f[6] =~ /^t/, wrote => $f[7] =~ /^t/ };
		}
		else
		{
			push @fail, $l;
		}
	}
	close $fh;
}
note scalar(@sec) . ' sections, ' . scalar(@fail) . ' failed calls';
is(scalar(@fail), 0, 'no lock call failed or timed out during the upgrade (every waiter served)')
  or diag join("\n", @fail[0 .. ($#fail < 9 ? $#fail : 9)]);
is(scalar(grep { !$_->{held} } @sec), 0, 'no section lost its lock');

# (1) at most `cap` sections of the group at any moment; exclusive ones alone
sub max_inside
{
	my ($group, $excl) = @_;
	my @ev;
	for my $s (@$group)
	{
		push @ev, [ $s->{in}, 1, $s ], [ $s->{out}, -1, $s ];
	}
	# at equal times exits first: [in, out] intervals that only touch do not overlap
	@ev = sort { $a->[0] <=> $b->[0] || $a->[1] <=> $b->[1] } @ev;
	my ($n, $max, $nx, $bad) = (0, 0, 0, 0);
	for my $e (@ev)
	{
		$n += $e->[1];
		$nx += $e->[1] if $excl && $e->[2]{kind} eq $excl;
		$max = $n if $n > $max;
		$bad++ if $e->[1] == 1 && $nx > 0 && $n > 1;
	}
	return ($max, $bad);
}
my @x = grep { $_->{kind} eq 'x' } @sec;
my @sem = grep { $_->{kind} eq 'sem' } @sec;
my @rw = grep { $_->{kind} eq 'sh' || $_->{kind} eq 'rwx' } @sec;
my ($mx) = max_inside(\@x);
is($mx, 1, sprintf('exclusive /ru/x: never two inside at once (%d sections)', scalar @x));
my ($msem) = max_inside(\@sem);
ok($msem <= 2, sprintf('semaphore /ru/sem of 2: at most %d inside at once (%d sections)', $msem, scalar @sem));
my (undef, $bad) = max_inside(\@rw, 'rwx');
is($bad, 0, sprintf('/ru/rw: an exclusive section overlaps no other (%d sections, %d exclusive)',
	scalar @rw, scalar grep { $_->{kind} eq 'rwx' } @rw));
my ($msh) = max_inside([ grep { $_->{kind} eq 'sh' } @rw ]);
note "shared /ru/rw: up to $msh readers at once";

# (2) no lost increment
for my $c (qw(x rw))
{
	open(my $fh, '<', "$dir/counter_$c") or die;
	my $v = <$fh>;
	close $fh;
	chomp $v;
	my $writes = grep { $_->{wrote} && ($c eq 'x' ? $_->{kind} eq 'x' : $_->{kind} eq 'rwx') } @sec;
	is($v, $writes, "counter $c counts every exclusive section ($writes)");
}

# (3) every session got in during every phase
for my $p (@phases)
{
	my ($name, $t0, $t1) = @$p;
	my @missing = grep {
		my $w = $_->{who};
		!grep { $_->{who} eq $w && $_->{in} >= $t0 && $_->{in} <= $t1 } @sec
	} @runs;
	is(scalar(@missing), 0, "phase '$name': every session got in")
	  or diag 'no section: ' . join(', ', map { $_->{who} } @missing);
}
# tokens strictly increase on the exclusive name
my @tok = map { $_->{tok} } sort { $a->{in} <=> $b->{in} } @x;
my $mono = !grep { $tok[$_] <= $tok[ $_ - 1 ] } 1 .. $#tok;
ok($mono, 'fencing tokens of /ru/x strictly increase in the order sections began');

# (4) nothing left behind
ok(wait_until(sub { !%{ etcd_keys($m[0], '/ru/') } }, 20), 'no key left under /ru/');
ok(!$na->log_contains('terminated by signal') && !$nb->log_contains('terminated by signal'), 'no backend crashed');

$na->stop;
$nb->stop;
done_testing();
