# A misbehaving TCP proxy between a PostgreSQL instance and a real etcd,
# driven by the test (t/fault_proxy.py does the work). Its log is the
# fault schedule of a run: every command and every drop or dup that fired,
# with timestamps.
#
#   my $fp = FaultProxy->start($etcd->{endpoint});
#   my $node = etcd_node('x', { endpoint => $fp->endpoint });
#   $fp->hold; ...; $fp->pass;
#   $fp->drop_reply('/v3/kv/txn', 'cut');    # the next txn: applied, reply lost
#   is($fp->status->{drops_fired}, 1);
#
# The proxy is stopped by PID in stop() and when the test file ends; it
# also exits by itself once the test process is gone.
package FaultProxy;

use strict;
use warnings;
use Carp;
use File::Basename;
use File::Spec;
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(time usleep);

our $SCRIPT = File::Spec->rel2abs(dirname(__FILE__)) . '/fault_proxy.py';
our $CMD_TIMEOUT = 5;       # seconds a control command may take
our $START_TIMEOUT = 10;    # seconds the proxy may take to answer at start

my @proxy_pids;

# start(target): a proxy to target ("http://127.0.0.1:2379" or
# "127.0.0.1:2379") listening on a free loopback port; returns once its
# control port answers.
sub start
{
	my ($class, $target) = @_;
	croak "FaultProxy: bad target '$target'"
	  unless $target =~ m{^(?:\w+://)?([\w.-]+):(\d+)/?$};
	my ($thost, $tport) = ($1, $2);
	my $dir = PostgreSQL::Test::Utils::tempdir('faultproxy');
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $cport = PostgreSQL::Test::Cluster::get_free_port();
	my $self = bless {
		dir => $dir,
		port => $port,
		control_port => $cport,
		target => "$thost:$tport",
		log => "$dir/fault.log",
		out => "$dir/proxy.out"
	}, $class;

	my $parent = $$;
	my $pid = fork();
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', $self->{out});
		open(STDERR, '>&', \*STDOUT);
		no warnings 'exec';
		exec('python3', $SCRIPT, '--listen-port', $port, '--target', $self->{target},
			'--control-port', $cport, '--log', $self->{log}, '--parent-pid', $parent);
		POSIX::_exit(127);
	}
	$self->{pid} = $pid;
	push @proxy_pids, $pid;

	my $deadline = time + $START_TIMEOUT;
	while (1)
	{
		last if eval { $self->status; 1 };
		if (waitpid($pid, POSIX::WNOHANG) == $pid)
		{
			@proxy_pids = grep { $_ != $pid } @proxy_pids;
			delete $self->{pid};
			croak "FaultProxy: the proxy exited at start:\n" . _slurp($self->{out});
		}
		if (time > $deadline)
		{
			$self->stop;
			croak "FaultProxy: no answer on control port $cport within ${START_TIMEOUT}s:\n"
			  . _slurp($self->{out});
		}
		usleep(50_000);
	}
	return $self;
}

# endpoint(): the URL clients use instead of etcd's
sub endpoint
{
	my ($self) = @_;
	return "http://127.0.0.1:$self->{port}";
}

# cmd(line): sends one control command; returns the answer line (without
# the newline). Dies on "err ..." or when no answer came within 5 s.
sub cmd
{
	my ($self, $line) = @_;
	my $s = IO::Socket::INET->new(
		PeerAddr => '127.0.0.1',
		PeerPort => $self->{control_port},
		Proto => 'tcp',
		Timeout => $CMD_TIMEOUT) or croak "FaultProxy: cannot reach the control port: $!";
	$s->autoflush(1);
	print $s "$line\n";
	my $sel = IO::Select->new($s);
	my $deadline = time + $CMD_TIMEOUT;
	my $buf = '';
	while ($buf !~ /\n/)
	{
		my $left = $deadline - time;
		last if $left <= 0 || !$sel->can_read($left);
		my $n = sysread($s, $buf, 4096, length $buf);
		last unless $n;
	}
	close $s;
	croak "FaultProxy: no answer to '$line' within ${CMD_TIMEOUT}s" unless $buf =~ /^(.*)\n/;
	my $answer = $1;
	croak "FaultProxy: '$line': $answer" unless $answer =~ /^ok\b/;
	return $answer;
}

# pass(): forward normally again, delivering what was held
sub pass
{
	my ($self) = @_;
	return $self->cmd('pass');
}

# hold(): a partition with the sockets left open
sub hold
{
	my ($self) = @_;
	return $self->cmd('hold');
}

# cut(): resets every current connection; returns how many
sub cut
{
	my ($self) = @_;
	my ($n) = $self->cmd('cut') =~ /(\d+)/;
	return $n;
}

# drop_reply(re, how): the next request matching re (a Python RE) reaches
# etcd but its reply is lost; how: cut (default, the client gets an RST)
# or hold (the client hears nothing more); or late=MS: as hold, and the
# request itself reaches etcd only MS ms after it arrived (the client has
# long given up; the connection to etcd stays open, so etcd applies it)
sub drop_reply
{
	my ($self, $re, $how) = @_;
	return $self->cmd("drop_reply $re" . ($how ? " $how" : ''));
}

# delay(ms): every forwarded chunk is late by ms, both directions
sub delay
{
	my ($self, $ms) = @_;
	return $self->cmd("delay $ms");
}

# dup(re): the next request matching re is delivered twice
sub dup
{
	my ($self, $re) = @_;
	return $self->cmd("dup $re");
}

# status(): the proxy's counters and mode, as a hash
sub status
{
	my ($self) = @_;
	my $answer = $self->cmd('status');
	$answer =~ s/^ok //;
	return decode_json($answer);
}

# log_text(): the fault schedule so far
sub log_text
{
	my ($self) = @_;
	return _slurp($self->{log});
}

# stop(): ends the proxy (by PID) and its connections
sub stop
{
	my ($self) = @_;
	return unless $self->{pid};
	_kill_wait($self->{pid});
	@proxy_pids = grep { $_ != $self->{pid} } @proxy_pids;
	delete $self->{pid};
	return;
}

# _kill_wait(pid): SIGTERM, then SIGKILL if it is still there after 5 s
sub _kill_wait
{
	my ($pid) = @_;
	kill 'TERM', $pid;
	my $deadline = time + 5;
	while (waitpid($pid, POSIX::WNOHANG) == 0)
	{
		if (time > $deadline)
		{
			kill 'KILL', $pid;
			waitpid($pid, 0);
			last;
		}
		usleep(20_000);
	}
	return;
}

# _slurp(file): a file's contents ('' if missing)
sub _slurp
{
	my ($file) = @_;
	open(my $fh, '<', $file) or return '';
	local $/;
	my $text = <$fh>;
	close $fh;
	return $text // '';
}

END
{
	local $?;    # waitpid must not change the test's exit status
	_kill_wait($_) for @proxy_pids;
}

1;
