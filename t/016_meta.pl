# META.json (PGXN meta-spec 1.0.0) is valid and agrees with the control
# file, the Makefile and the Debian package version. No cluster needed.
use strict;
use warnings;
use Cwd qw(getcwd);
use JSON::PP;
use Test::More;

my $srcdir = getcwd();    # prove runs in the source tree

sub slurp
{
	my ($f) = @_;
	open(my $fh, '<', $f) or die "$f: $!";
	local $/;
	return <$fh>;
}

my $meta = eval { JSON::PP->new->utf8->relaxed(0)->decode(slurp("$srcdir/META.json")) };
ok($meta, 'META.json parses as JSON') or diag($@);
BAIL_OUT('META.json does not parse') unless $meta;
is(ref $meta, 'HASH', 'META.json is an object');

# required by the spec, and what the issue asks for besides
for my $k (qw(name abstract version maintainer license provides meta-spec prereqs release_status))
{
	ok(exists $meta->{$k}, "META.json has \"$k\"");
}

my $semver = qr/^(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)(?:-?[A-Za-z][0-9A-Za-z-]*)?$/;
like($meta->{'meta-spec'}{version} // '', qr/^1\.0\.0$/, 'meta-spec version is 1.0.0');
like($meta->{name} // '', qr/^[^\s\/\\:]{2,}$/, 'name is a valid distribution name');
ok(length($meta->{abstract} // '') > 0, 'abstract is not empty');
like($meta->{version} // '', $semver, 'version is a semantic version');
my @maint = ref $meta->{maintainer} eq 'ARRAY' ? @{ $meta->{maintainer} } : ($meta->{maintainer});
ok(@maint && !grep({ !defined || !/\S/ } @maint), 'maintainer: one or more non-empty strings');

my %licenses = map { $_ => 1 } qw(agpl_3 apache_1_1 apache_2_0 artistic_1 artistic_2 bsd freebsd gfdl_1_2
  gfdl_1_3 gpl_1 gpl_2 gpl_3 lgpl_2_1 lgpl_3_0 mit mozilla_1_0 mozilla_1_1 openssl perl_5 postgresql
  qpl_1_0 ssleay sun zlib open_source restricted unrestricted unknown);
my @lic = ref $meta->{license} eq 'ARRAY' ? @{ $meta->{license} }
  : ref $meta->{license} eq 'HASH' ? keys %{ $meta->{license} } : ($meta->{license});
ok(@lic && !grep({ !defined || !$licenses{$_} && ref $meta->{license} ne 'HASH' } @lic),
	'license is one the spec knows (or a name => URL map): ' . join(',', map { $_ // 'undef' } @lic));
is($meta->{license}, 'postgresql', 'license: the PostgreSQL License');
{
	my $lic = slurp("$srcdir/LICENSE");
	like($lic, qr/\APostgreSQL License\n\nCopyright \(c\) \d{4}, The etcd_lock authors\n/, 'LICENSE: the PostgreSQL License, The etcd_lock authors');
	my $cr = slurp("$srcdir/debian/copyright");
	like($cr, qr/^License: PostgreSQL$/m, 'debian/copyright: License: PostgreSQL');
	like($cr, qr/^Copyright: \d{4} The etcd_lock authors$/m, 'debian/copyright: the etcd_lock authors');
}
like($meta->{release_status} // '', qr/^(?:stable|testing|unstable)$/, 'release_status is stable, testing or unstable');

# prereqs: phase => relationship => { name => version }
my $pre_ok = ref $meta->{prereqs} eq 'HASH';
for my $phase (keys %{ $meta->{prereqs} // {} })
{
	$pre_ok = 0 unless $phase =~ /^(?:configure|build|test|runtime|develop)$/;
	for my $rel (keys %{ $meta->{prereqs}{$phase} })
	{
		$pre_ok = 0 unless $rel =~ /^(?:requires|recommends|suggests|conflicts)$/;
		for my $v (values %{ $meta->{prereqs}{$phase}{$rel} })
		{
			$pre_ok = 0 unless $v =~ $semver || $v =~ /^0$/;
		}
	}
}
ok($pre_ok, 'prereqs are phase => relationship => name => version');
like($meta->{prereqs}{runtime}{requires}{PostgreSQL} // '', qr/^15\.0\.0$/, 'runtime requires PostgreSQL 15.0.0');

if (exists $meta->{resources})
{
	my $r = $meta->{resources};
	ok(ref $r eq 'HASH' && !grep({ !/^(?:homepage|bugtracker|repository|x_\w+)$/i } keys %$r),
		'resources has only homepage, bugtracker, repository (or x_ keys)');
	for my $k (grep { ref $r->{$_} eq 'HASH' } keys %$r)
	{
		for my $u (grep { /^(?:web|url)$/ } keys %{ $r->{$k} })
		{
			unlike($r->{$k}{$u}, qr/example\.(?:com|org)|FIXME|TODO|\@URL\@/i, "resources.$k.$u is no placeholder");
		}
	}
}

# the control file's default version is what META.json says
my $control = slurp("$srcdir/etcd_lock.control");
my ($default) = $control =~ /^\s*default_version\s*=\s*'([^']+)'/m;
ok(defined $default, "etcd_lock.control has default_version ($default)");
my @parts = split /\./, $default;
push @parts, 0 while @parts < 3;
my $want = join('.', @parts);
is($meta->{version}, $want, "META.json version is the control file's default_version ($default -> $want)");

my $p = $meta->{provides}{etcd_lock};
ok(ref $p eq 'HASH', 'provides etcd_lock');
is($p->{version}, $want, 'provides etcd_lock at that version');
ok(length($p->{abstract} // '') > 0, 'provides etcd_lock with an abstract');
is($p->{file}, "sql/etcd_lock--$default.sql", 'the provided file is the full script of the default version');
my $mk = slurp("$srcdir/Makefile");
$mk =~ s/\\\n/ /g;
ok(-f "$srcdir/$p->{file}" || $mk =~ /^DATA_built\s*[:+]?=.*(?<=[\s=])\Q$p->{file}\E(?:\s|$)/m,
	"$p->{file} exists or is built by the Makefile (DATA_built)");
ok(!defined $p->{docfile} || -f "$srcdir/$p->{docfile}", 'the provided docfile exists');

# the Debian package is of the same upstream version
SKIP:
{
	skip 'no debian/changelog', 1 unless -f "$srcdir/debian/changelog";
	my ($deb) = slurp("$srcdir/debian/changelog") =~ /^\S+ \(([^)]+)\)/;
	(my $upstream = $deb) =~ s/^\d+://;
	$upstream =~ s/-[^-]*$//;
	is($upstream, $meta->{version}, "debian/changelog's upstream version ($deb) is META.json's");
}

done_testing();
