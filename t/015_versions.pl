# Versioned SQL and upgrades (PostgreSQL 15 only):
#  a. a 1.0 extension holding session and transaction locks is updated to
#     the current version (1.3, through 1.1 and 1.2) in place; the locks stay held,
#     reported and releasable, the 1.1, 1.2 and 1.3 objects work, and the current
#     regression suite passes on an extension that was created as 1.0 and
#     updated;
#  b. a fresh 1.3, a 1.0-, 1.1- and 1.2-then-UPDATE have identical
#     catalogs;
#  c. every C symbol any version's SQL names is exported by the installed
#     library, and the 1.0 script is the released one, unedited;
#  d. mixed versions: an instance running the 1.0 release's library (built
#     from its commit into a private copy of the PostgreSQL installation,
#     cached under /var/cache/etcd_lock/lib-1.0) and one running this build,
#     on the same etcd, exclude each other on the same names both ways.
use strict;
use warnings;
use Cwd qw(getcwd);
use File::Basename qw(dirname);
use File::Copy qw(copy);
use File::Path qw(make_path remove_tree);
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

# the 1.0 release of the library (the commit its SQL and C were cut from)
my $V10_COMMIT = '8e9b3ed0c1488a67f00e521f0154293a742a77cd';
# sha256 of t/v1.0/etcd_lock-1.0.tar.gz (git archive --format=tar $V10_COMMIT
# -- src sql Makefile etcd_lock.control | gzip -9n)
my $V10_TARBALL_SHA256 = 'd95980c070a510438310f0cc5620a08aa0fa58a55b1cef15f6ee6db34e830a0e';

sub pg_config
{
	my ($opt) = @_;
	my $v = `pg_config $opt`;
	die "pg_config $opt failed" if $?;
	chomp $v;
	return $v;
}

my ($major, $minor) = pg_config('--version') =~ /PostgreSQL (\d+)\.(\d+)/
  or die 'cannot parse pg_config --version';
plan skip_all => "the version tests run on PostgreSQL 15 only (the 1.0 release was built for it); this is $major"
  unless $major == 15;
plan skip_all => 'PostgreSQL::Test::Cluster does not support install_path'
  unless PostgreSQL::Test::Cluster->can('install_path');

my $pkglibdir = pg_config('--pkglibdir');
my $sharedir = pg_config('--sharedir');
my $bindir = pg_config('--bindir');
my $srcdir = getcwd();    # prove runs in the source tree

# psql_err(node, db, sql): runs sql; returns (sqlstate or '', stdout, elapsed s)
sub psql_err
{
	my ($node, $db, $sql) = @_;
	my ($out, $err) = ('', '');
	my $t0 = time;
	$node->psql($db, "\\set VERBOSITY verbose\n$sql", stdout => \$out, stderr => \$err);
	my $code = $err =~ /ERROR:\s+([0-9A-Z]{5}):/ ? $1 : '';
	return ($code, $out, time - $t0);
}

# ext_version(node, db): the installed version of etcd_lock in db
sub ext_version
{
	my ($node, $db) = @_;
	return $node->safe_psql($db, "SELECT extversion FROM pg_extension WHERE extname = 'etcd_lock'");
}

# loaded_library(node): the etcd_lock.so mapped by a backend of node (read
# from /proc while the backend is there; it runs as the same user)
sub loaded_library
{
	my ($node) = @_;
	my $s = $node->background_psql('postgres');
	my $pid = $s->query_safe('SELECT pg_backend_pid()');
	my $maps = slurp_file("/proc/$pid/maps");
	$s->quit;
	return $maps =~ m{(/\S*/etcd_lock\.so)\n} ? $1 : '';
}

# sql_symbols(files): the C symbols named by AS 'MODULE_PATHNAME', 'sym'
sub sql_symbols
{
	my %sym;
	for my $f (@_)
	{
		my $sql = slurp_file($f);
		$sym{$1}{$f} = 1 while $sql =~ /AS\s+'MODULE_PATHNAME'\s*,\s*'([^']+)'/g;
	}
	return \%sym;
}

# exported(lib): the dynamic symbols lib defines
sub exported
{
	my ($lib) = @_;
	my %s;
	for (`nm -D --defined-only '$lib'`)
	{
		$s{$1} = 1 if /^[0-9a-fA-F]*\s+[TtWiV]\s+(\S+)$/;
	}
	die "nm -D $lib failed" if $?;
	return \%s;
}

my $etcd = start_etcd();
my $new = etcd_node('v11', $etcd, 'etcd_lock.request_timeout' => '3s');
like(loaded_library($new), qr{^\Q$pkglibdir\E/etcd_lock\.so$}, "node v11 runs the installed library ($pkglibdir)");
is(ext_version($new, 'postgres'), '1.3', 'CREATE EXTENSION makes 1.3 (the default version)');

# ---------------------------------------------------------------- (c)
{
	my @sql = sort(glob("$srcdir/sql/etcd_lock--*.sql"), glob("$sharedir/extension/etcd_lock--*.sql"));
	my $sym = sql_symbols(@sql);
	ok(grep(m{/etcd_lock--1\.0\.sql$}, @sql) && grep(m{/etcd_lock--1\.0--1\.1\.sql$}, @sql)
		  && grep(m{/etcd_lock--1\.1--1\.2\.sql$}, @sql) && grep(m{/etcd_lock--1\.2--1\.3\.sql$}, @sql),
		'the 1.0, 1.0--1.1, 1.1--1.2 and 1.2--1.3 scripts are there (tree, installed): ' . join(' ', map { s{.*/}{}r } @sql));
	ok(scalar(keys %$sym) >= 10, scalar(keys %$sym) . ' distinct C symbols named by the SQL scripts');
	my $exp = exported("$pkglibdir/etcd_lock.so");
	my @missing = grep { !$exp->{$_} || !$exp->{"pg_finfo_$_"} } sort keys %$sym;
	is(join(' ', @missing), '',
		'every symbol any version\'s SQL names (and its pg_finfo_) is exported by the installed etcd_lock.so');
	ok($exp->{Pg_magic_func}, 'the library has its magic block');
}

# ---------------------------------------------------------------- (a)
# a 1.0 extension with locks held, updated in place
$new->safe_psql('postgres', 'CREATE DATABASE upg');
$new->safe_psql('upg', "CREATE EXTENSION etcd_lock VERSION '1.0'");
is(ext_version($new, 'upg'), '1.0', 'CREATE EXTENSION ... VERSION 1.0');
is($new->safe_psql('upg', "SELECT to_regclass('etcd_lock_status') IS NULL"), 't', '1.0 has no etcd_lock_status');
{
	my $s1 = $new->background_psql('upg', on_error_stop => 0);
	my $tok_s = $s1->query_safe("SELECT etcd_lock('/upg/s')");
	is($s1->query_safe("SELECT count(*) FROM etcd_locks WHERE pid = pg_backend_pid()"), '1',
		'the 1.0 view shows the session lock');
	$s1->query_safe('BEGIN');
	my $tok_x = $s1->query_safe("SELECT etcd_xact_lock('/upg/x')");
	ok($tok_s > 0 && $tok_x > 0, "1.0: session lock ($tok_s) and transaction lock ($tok_x) held");

	# a DBA's own view on a 1.0 function whose 1.1 successor has other columns
	$new->safe_psql('upg',
		"CREATE VIEW my_holders AS SELECT name, waiters FROM etcd_lock_holders('/upg/')");
	$new->safe_psql('upg', 'ALTER EXTENSION etcd_lock UPDATE');
	is(ext_version($new, 'upg'), '1.3', 'ALTER EXTENSION etcd_lock UPDATE goes to 1.3 (with a user view on etcd_lock_holders)');
	is($new->safe_psql('upg', "SELECT etcd_lock_key('/upg/s')"), '/upg/s/', 'the 1.2 etcd_lock_key works after the update');
	is($new->safe_psql('upg', "SELECT locks_acquired >= 2 AND acquire_txns >= 2 FROM etcd_lock_stats"), 't',
		'the 1.3 etcd_lock_stats works after the update (it counted the 1.0 session\'s locks)');
	is($new->safe_psql('upg', "SELECT string_agg(name, ',' ORDER BY name) FROM my_holders"), '/upg/s,/upg/x',
		'the user view on the 1.0 etcd_lock_holders still works after the update');
	is($new->safe_psql('upg', "SELECT string_agg(name || ':' || mode, ',' ORDER BY name) FROM etcd_lock_holders('/upg/')"),
		'/upg/s:exclusive,/upg/x:exclusive', 'the 1.1 etcd_lock_holders has the mode column');

	is($s1->query_safe("SELECT etcd_lock_token('/upg/s')"), $tok_s, 'the session lock is still held, same token');
	is($s1->query_safe("SELECT etcd_lock_token('/upg/x')"), $tok_x,
		'the transaction lock is still held inside its transaction, same token');
	is($new->safe_psql('upg', "SELECT etcd_try_lock('/upg/s')::text || etcd_try_lock('/upg/x')::text"),
		'falsefalse', 'another session cannot take either');
	is( $s1->query_safe(
			"SELECT string_agg(name || ':' || scope || ':' || state || ':' || (database = current_database()), ' ' ORDER BY name) "
			  . 'FROM etcd_locks WHERE pid = pg_backend_pid()'),
		'/upg/s:session:held:true /upg/x:xact:held:true',
		'the updated etcd_locks view reports both with the 1.1 columns');
	$s1->query_safe('COMMIT');
	is($s1->query_safe("SELECT etcd_lock_token('/upg/x') IS NULL"), 't', 'COMMIT released the transaction lock');
	is($new->safe_psql('upg', "SELECT etcd_try_lock('/upg/x')"), 't', 'which another session can now take');
	is($s1->query_safe("SELECT etcd_unlock('/upg/s')"), 't', 'the session lock taken under 1.0 unlocks under 1.1');
	is($new->safe_psql('upg', "SELECT etcd_try_lock('/upg/s')"), 't', 'and is free for others');
	is( $new->safe_psql('upg',
			'SELECT worker_pid > 0 AND etcd_reachable AND requests > 0 FROM etcd_lock_status'),
		't', 'the 1.1 etcd_lock_status view works after the update');
	$s1->quit;
}

# the current regression suite, on an extension created as 1.0 and updated:
# each "CREATE EXTENSION etcd_lock;" of the tests (and their expected
# output) becomes a 1.0 install followed by the update
{
	my $mk = slurp_file("$srcdir/Makefile");
	$mk =~ s/\\\n/ /g;
	my ($tests) = $mk =~ /^REGRESS\s*=\s*(.*)$/m or die 'no REGRESS in the Makefile';
	my @tests = split ' ', $tests;
	my $dir = PostgreSQL::Test::Utils::tempdir('regress_upd');
	make_path("$dir/sql", "$dir/expected");
	my ($in_sql, $in_out) = (0, 0);
	for my $t (@tests)
	{
		my $sql = slurp_file("$srcdir/sql/$t.sql");
		my $out = slurp_file("$srcdir/expected/$t.out");
		my $upd = "CREATE EXTENSION etcd_lock VERSION '1.0';\nALTER EXTENSION etcd_lock UPDATE;\n";
		$in_sql += ($sql =~ s/^CREATE EXTENSION etcd_lock;\n/$upd/mg);
		$in_out += ($out =~ s/^CREATE EXTENSION etcd_lock;\n/$upd/mg);
		append_to_file("$dir/sql/$t.sql", $sql);
		append_to_file("$dir/expected/$t.out", $out);
	}
	ok($in_sql > 0 && $in_sql == $in_out, "the suite's CREATE EXTENSION ($in_sql) turned into 1.0 + UPDATE");
	my $pg_regress = $ENV{PG_REGRESS} // dirname(dirname(pg_config('--pgxs'))) . '/test/regress/pg_regress';
	my @cmd = ($pg_regress, "--inputdir=$dir", "--outputdir=$dir", "--bindir=$bindir",
		'--host=' . $new->host, '--port=' . $new->port, '--dbname=contrib_regression', @tests);
	my $ok = run_log(\@cmd);
	ok($ok, 'the regression suite (' . join(' ', @tests) . ') passes on 1.0 updated to 1.3');
	diag(slurp_file("$dir/regression.diffs")) if !$ok && -f "$dir/regression.diffs";
}

# ---------------------------------------------------------------- (b)
{
	$new->safe_psql('postgres', 'CREATE DATABASE cat_fresh');
	$new->safe_psql('postgres', 'CREATE DATABASE cat_upd');
	$new->safe_psql('cat_fresh', 'CREATE EXTENSION etcd_lock');
	$new->safe_psql('cat_upd', "CREATE EXTENSION etcd_lock VERSION '1.0'");
	$new->safe_psql('cat_upd', 'ALTER EXTENSION etcd_lock UPDATE');
	$new->safe_psql('postgres', 'CREATE DATABASE cat_upd11');
	$new->safe_psql('cat_upd11', "CREATE EXTENSION etcd_lock VERSION '1.1'");
	is(ext_version($new, 'cat_upd11'), '1.1', 'CREATE EXTENSION ... VERSION 1.1');
	$new->safe_psql('cat_upd11', 'ALTER EXTENSION etcd_lock UPDATE');
	is(ext_version($new, 'cat_upd11'), '1.3', 'a 1.1 extension updates to 1.3');
	$new->safe_psql('postgres', 'CREATE DATABASE cat_upd12');
	$new->safe_psql('cat_upd12', "CREATE EXTENSION etcd_lock VERSION '1.2'");
	is(ext_version($new, 'cat_upd12'), '1.2', 'CREATE EXTENSION ... VERSION 1.2');
	$new->safe_psql('cat_upd12', 'ALTER EXTENSION etcd_lock UPDATE');
	is(ext_version($new, 'cat_upd12'), '1.3', 'a 1.2 extension updates to 1.3');
	my $members = q{
		SELECT classid, objid, objsubid FROM pg_depend
		WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
		  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'etcd_lock')};
	my %q = (
		'extension members' =>
		  "SELECT pg_describe_object(classid, objid, objsubid) FROM ($members) m ORDER BY 1",
		'dependencies of and on members' => qq{
			SELECT pg_describe_object(d.classid, d.objid, d.objsubid) || ' -> '
			       || pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) || ' ' || d.deptype::text
			FROM pg_depend d JOIN ($members) m
			  ON (d.classid, d.objid) = (m.classid, m.objid) OR (d.refclassid, d.refobjid) = (m.classid, m.objid)
			WHERE d.deptype <> 'e' ORDER BY 1},
		'function definitions, privileges, comments' => qq{
			SELECT pg_get_functiondef(p.oid), p.proacl::text, obj_description(p.oid, 'pg_proc')
			FROM pg_proc p JOIN ($members) m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
			ORDER BY p.oid::regprocedure::text},
		'views: definitions, columns, privileges, comments' => qq{
			SELECT c.relname, pg_get_viewdef(c.oid), c.relacl::text, obj_description(c.oid, 'pg_class'),
			       (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
			        FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped)
			FROM pg_class c JOIN ($members) m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
			ORDER BY 1},
		'initial privileges' => qq{
			SELECT pg_describe_object(i.classoid, i.objoid, i.objsubid), i.privtype, i.initprivs::text
			FROM pg_init_privs i JOIN ($members) m ON (i.classoid, i.objoid) = (m.classid, m.objid)
			ORDER BY 1});
	for my $what (sort keys %q)
	{
		my $fresh = $new->safe_psql('cat_fresh', $q{$what});
		my $upd = $new->safe_psql('cat_upd', $q{$what});
		my $upd11 = $new->safe_psql('cat_upd11', $q{$what});
		my $upd12 = $new->safe_psql('cat_upd12', $q{$what});
		ok($fresh ne '', "fresh 1.3 has $what");
		is($upd, $fresh, "$what: 1.0 + UPDATE is identical to a fresh 1.3");
		is($upd11, $fresh, "$what: 1.1 + UPDATE is identical to a fresh 1.3");
		is($upd12, $fresh, "$what: 1.2 + UPDATE is identical to a fresh 1.3");
	}
}

# ---------------------------------------------------------------- (d)
# v10_install(): the path (parent of bin/ and lib/) of a private copy of this
# PostgreSQL installation whose etcd_lock is the 1.0 release, built once
# per commit and PostgreSQL minor version and cached; (undef, why) if the
# release cannot be had.
sub v10_install
{
	my $cache = $ENV{ETCD_LOCK_CACHE} // '/var/cache/etcd_lock/lib-1.0';
	my $key = substr($V10_COMMIT, 0, 12) . "-pg$major.$minor";
	my $home = dirname($bindir);    # /usr/lib/postgresql/15: bin/ and lib/
	my $cached = "$cache/$key";
	return ("$cached/root$home", 'cached') if -f "$cached/.complete";

	# the source: $ETCD_LOCK_GIT_DIR (scripts/test.sh runs the suite in a
	# copy of the tree without .git), else the tree itself; the checkout may
	# belong to another user (root), hence safe.directory
	my ($repo, $why);
	for my $c (grep { defined && -d } ($ENV{ETCD_LOCK_GIT_DIR}, $srcdir))
	{
		my $top = `git -c safe.directory='*' -C '$c' rev-parse --show-toplevel 2>/dev/null`;
		next if $?;
		chomp $top;
		if (system("git -c safe.directory='*' -C '$top' cat-file -e '$V10_COMMIT^{commit}' 2>/dev/null") == 0)
		{
			$repo = $top;
			last;
		}
		$why = "the 1.0 release (commit $V10_COMMIT) is not in the history of $top (a shallow clone?)";
	}
	$why //= 'no git checkout found (set ETCD_LOCK_GIT_DIR to the clone; scripts/test.sh copies the tree without .git)';

	# without the history (a shallow clone): the release's sources as
	# t/v1.0/etcd_lock-1.0.tar.gz holds them (git archive of that commit:
	# src, sql, Makefile, control), checked against its pinned digest
	my $tarball = "$srcdir/t/v1.0/etcd_lock-1.0.tar.gz";
	if (!$repo && -f $tarball)
	{
		my ($sum) = split ' ', `sha256sum '$tarball'`;
		return (undef, "$why; and $tarball does not have the pinned digest")
		  unless ($sum // '') eq $V10_TARBALL_SHA256;
		note "no history with $V10_COMMIT ($why): building 1.0 from $tarball";
	}
	return (undef, $why) unless $repo || -f $tarball;

	# build where the cache is, so that the finished tree is renamed into
	# place in one step; a cache we may not write means building in this
	# test's temp dir, every run
	my $stage;
	if (eval { make_path($cache); 1 } && -w $cache)
	{
		$stage = "$cache/.build-$key-$$";
		remove_tree($stage);
		make_path($stage);
	}
	else
	{
		note "cache $cache is not writable by this user; building the 1.0 library without caching";
		$stage = PostgreSQL::Test::Utils::tempdir('v10');
		$cached = undef;
	}
	my $root = "$stage/root";
	my $src = "$stage/src";
	make_path($src, "$root" . dirname($home), "$root" . dirname($sharedir));
	my $log = "$stage/build.log";
	my @steps = (
		$repo ? "git -c safe.directory='*' -C '$repo' archive '$V10_COMMIT' | tar -x -C '$src'"
		  : "tar -xzf '$tarball' -C '$src'",
		"cp -a '$home' '$root$home'",
		"cp -a '$sharedir' '$root$sharedir'",
		# the copy must carry only the 1.0 release of etcd_lock
		"rm -rf '$root$pkglibdir'/etcd_lock.so '$root$pkglibdir'/bitcode/etcd_lock* '$root$sharedir'/extension/etcd_lock*",
		"make -C '$src' -s with_llvm=no PG_CONFIG='$bindir/pg_config'",
		"make -C '$src' -s with_llvm=no PG_CONFIG='$bindir/pg_config' DESTDIR='$root' install");
	for my $step (@steps)
	{
		if (system("timeout 300 sh -c \"$step\" >>'$log' 2>&1") != 0)
		{
			my $out = -f $log ? slurp_file($log) : '';
			return (undef, "building the 1.0 library failed at: $step\n$out");
		}
	}
	remove_tree($src);
	append_to_file("$stage/.complete", "$V10_COMMIT from " . ($repo // $tarball) . "\n");
	return ("$root$home", 'built, not cached') unless $cached;
	if (!rename($stage, $cached))
	{
		# another run finished first: use its copy
		remove_tree($stage);
		return (undef, "could not move $stage to $cached: $!") unless -f "$cached/.complete";
	}
	return ("$cached/root$home", 'built and cached');
}

SKIP:
{
	my $t0 = time;
	my ($inst, $how) = v10_install();
	if (!$inst)
	{
		if ($ENV{CI})
		{
			fail("the 1.0 library for the mixed-version test: $how");
		}
		else
		{
			note "NOTE: $how";
		}
		skip "mixed-version test: no 1.0 library ($how)", 1;
	}
	note sprintf('1.0 library: %s (%s, %.1f s)', $inst, $how, time - $t0);

	# the released 1.0 script is never edited
	my $home_rel = dirname($bindir);
	my $inst_root = substr($inst, 0, length($inst) - length($home_rel));
	is(slurp_file("$srcdir/sql/etcd_lock--1.0.sql"), slurp_file("$inst_root$sharedir/extension/etcd_lock--1.0.sql"),
		'sql/etcd_lock--1.0.sql is the released 1.0 script, unedited');
	ok(!exported("$inst_root$pkglibdir/etcd_lock.so")->{etcd_lock_status_sql},
		'the private installation has the 1.0 library (no etcd_lock_status_sql)');

	my $old = PostgreSQL::Test::Cluster->new('v10', install_path => $inst);
	$old->init;
	$old->append_conf('postgresql.conf', "shared_preload_libraries = 'etcd_lock'");
	$old->append_conf('postgresql.conf', "etcd_lock.endpoints = '$etcd->{endpoint}'");
	$old->start;
	$old->safe_psql('postgres', "CREATE EXTENSION etcd_lock VERSION '1.0'");
	is( $old->safe_psql('postgres',
			"SELECT string_agg(version, ',') FROM pg_available_extension_versions WHERE name = 'etcd_lock'"),
		'1.0', 'node v10 offers etcd_lock 1.0 only');
	like(loaded_library($old), qr{^\Q$inst_root$pkglibdir\E/etcd_lock\.so$}, 'node v10 runs the 1.0 library');

	my $sa = session($old);
	my $sb = session($new);

	# (from, to): from holds a name; to can neither try-lock nor wait it out
	for my $dir ([ $old, $sa, 'v10', $new, $sb, 'v11' ], [ $new, $sb, 'v11', $old, $sa, 'v10' ])
	{
		my ($hn, $hs, $hname, $on, $os, $oname) = @$dir;
		my $name = "/mixed/$hname";
		ok($hs->query_safe("SELECT etcd_lock('$name')") > 0, "$hname holds $name");
		is($on->safe_psql('postgres', "SELECT etcd_try_lock('$name')"), 'f',
			"$oname: etcd_try_lock('$name') is false while $hname holds it");
		my ($code, undef, $secs) = psql_err($on, 'postgres', "SELECT etcd_lock('$name', '2s')");
		is($code, '55P03', "$oname: etcd_lock('$name', '2s') times out with 55P03");
		ok($secs >= 1.9, sprintf('%s waited the timeout (%.2f s)', $oname, $secs));
		is($hs->query_safe("SELECT etcd_unlock('$name')"), 't', "$hname releases $name");
		is($os->query_safe("SELECT etcd_try_lock('$name')"), 't', "$oname then gets $name");

		# a waiter on the other version is handed the lock
		my $m = start_query($hs, "SELECT etcd_lock('$name', '20s')");
		ok(wait_until(sub { $hn->safe_psql('postgres', "SELECT count(*) FROM etcd_locks WHERE name = '$name' AND mode = 'waiting'") eq '1' }, 10),
			"$hname waits for $name");
		is($os->query_safe("SELECT etcd_unlock('$name')"), 't', "$oname releases $name");
		my ($tok, $err) = finish_query($hs, $m, 30);
		ok($tok > 0 && $err eq '', "waiter on $hname was handed $name");
		is($hs->query_safe("SELECT etcd_unlock('$name')"), 't', "$hname releases $name again");
	}

	# both instances append their letter to a shared file under the same
	# lock (read, pause, write back); a lost update would show in its
	# length, and the letters show that the two really took turns
	my $dir = PostgreSQL::Test::Utils::tempdir('counter');
	my $file = "$dir/counter";
	append_to_file($file, "\n");
	my $n = 25;
	my $loop = sub {
		my ($letter) = @_;
		return qq{DO \$\$
DECLARE c text;
BEGIN
	FOR i IN 1..$n LOOP
		PERFORM etcd_lock('/mixed/counter', '60s');
		c := btrim(pg_read_file('$file'), E' \\n');
		PERFORM pg_sleep(0.01);
		EXECUTE format('COPY (SELECT %L) TO %L', c || '$letter', '$file');
		PERFORM etcd_unlock('/mixed/counter');
	END LOOP;
END \$\$};
	};
	$t0 = time;
	my $ma = start_query($sa, $loop->('a'));
	my $mb = start_query($sb, $loop->('b'));
	my (undef, $ea) = finish_query($sa, $ma, 120);
	my (undef, $eb) = finish_query($sb, $mb, 120);
	is("$ea$eb", '', 'both counter loops ran without errors');
	(my $trace = slurp_file($file)) =~ s/\s+//g;
	note "order of the critical sections (a: v10, b: v11): $trace";
	is(length($trace), 2 * $n,
		sprintf('%d critical sections from each version under one lock, none lost (%.1f s)', $n, time - $t0));
	my $turns = () = $trace =~ /(?=ab|ba)/g;
	ok($turns >= 2, "the two versions took turns ($turns changes of holder)");

	# shared locks of this build (if it has them) exclude 1.0's exclusive lock
  SKIP:
	{
		skip 'this build has no etcd_lock_shared(text, interval)', 5
		  unless $new->safe_psql('postgres', "SELECT to_regprocedure('etcd_lock_shared(text,interval)') IS NOT NULL")
		  eq 't';
		my $sh = session($new);
		ok($sh->query_safe("SELECT etcd_lock_shared('/mixed/shared', NULL) IS NOT NULL"), 'v11 holds /mixed/shared in shared mode');
		is($old->safe_psql('postgres', "SELECT etcd_try_lock('/mixed/shared')"), 'f',
			'v10: etcd_try_lock on a name held in shared mode by v11 is false');
		my ($code) = psql_err($old, 'postgres', "SELECT etcd_lock('/mixed/shared', '2s')");
		is($code, '55P03', 'v10: etcd_lock on it times out with 55P03');
		$sh->quit;    # the session's end releases its locks
		ok(wait_until(sub { $sa->query_safe("SELECT etcd_try_lock('/mixed/shared')") eq 't' }, 15),
			'v10 gets it once the shared holder is gone');
		($code) = psql_err($new, 'postgres', "SELECT etcd_lock_shared('/mixed/shared', '2s')");
		is($code, '55P03', 'v11: a shared lock waits out v10\'s exclusive hold and times out with 55P03');
		$sa->query_safe("SELECT etcd_unlock('/mixed/shared')");
	}
	$sa->quit;
	$sb->quit;
	$old->stop;
}

$new->stop;
done_testing();
