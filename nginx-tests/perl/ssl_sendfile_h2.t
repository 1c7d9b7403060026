#!/usr/bin/perl

# Tests for HTTP/2 over TLS with sendfile: file responses in DATA frames,
# which go out with SSL_sendfile() when kernel TLS is in use ("sendfile on"
# with "ssl_conf_command Options KTLS"), and through SSL_write() otherwise.
#
# Bodies are checked by length and digest, so the tests are meaningful with
# and without kernel TLS.  With TEST_NGINX_KTLS_MODULE set (the path of
# ngx_http_ktls_module, loaded through TEST_NGINX_GLOBALS) the module's
# variables are checked too; with TEST_NGINX_KTLS_KERNEL set (the kernel
# offers kTLS) kernel TLS is expected to be in use.

###############################################################################

use warnings;
use strict;

use Test::More;

use Digest::MD5 qw/ md5_hex /;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::HTTP2;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/http http_ssl http_v2 ssi socket_ssl_alpn/)
	->has_daemon('openssl');

my $module = $ENV{TEST_NGINX_KTLS_MODULE};

# the KTLS option is known to OpenSSL 3.0 and newer

my $ktls_option = $t->has_module('OpenSSL') && $t->has_feature('openssl:3.0.0')
	&& $t->has_version('1.19.4') ? 'ssl_conf_command Options KTLS;' : '';

# "http2 on" appeared in 1.25.1, where "listen ... http2" became deprecated

my ($listen_http2, $http2_on) = $t->has_version('1.25.1')
	? ('', 'http2 on;') : (' http2', '');

my $ktls_log = $module ? <<'EOF' : '';
    log_format ktls '$request_uri $status $body_bytes_sent '
                    '$ktls_tx $ktls_sendfile_bytes';
    access_log %%TESTDIR%%/ktls.log ktls;
EOF

my $conf = <<'EOF';

%%TEST_GLOBALS%%

daemon off;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    ssl_certificate_key localhost.key;
    ssl_certificate localhost.crt;
    ssl_protocols TLSv1.2 TLSv1.3;

    %%KTLS_OPTION%%

%%KTLS_LOG%%

    server {
        listen       127.0.0.1:8443 ssl%%LISTEN_HTTP2%%;
        server_name  localhost;

        %%HTTP2_ON%%

        sendfile on;

        location = /ssi.html {
            ssi on;
        }
    }

    server {
        listen       127.0.0.1:8444 ssl%%LISTEN_HTTP2%% sndbuf=8k;
        server_name  localhost;

        %%HTTP2_ON%%

        sendfile on;
        sendfile_max_chunk 128k;
    }
}

EOF

$conf =~ s/%%KTLS_OPTION%%/$ktls_option/;
$conf =~ s/%%KTLS_LOG%%\n/$ktls_log/;
$conf =~ s/%%LISTEN_HTTP2%%/$listen_http2/g;
$conf =~ s/%%HTTP2_ON%%/$http2_on/g;

$t->write_file_expand('nginx.conf', $conf);

$t->write_file('openssl.conf', <<EOF);
[ req ]
default_bits = 2048
encrypt_key = no
distinguished_name = req_distinguished_name
[ req_distinguished_name ]
EOF

my $d = $t->testdir();

foreach my $name ('localhost') {
	system('openssl req -x509 -new '
		. "-config $d/openssl.conf -subj /CN=$name/ "
		. "-out $d/$name.crt -keyout $d/$name.key "
		. ">>$d/openssl.out 2>&1") == 0
		or die "Can't create certificate for $name: $!\n";
}

# every 10 bytes differ, so that a misplaced or lost piece shows

my $big = join('', map { sprintf "XX%06dXX", $_ } (1 .. 300000));
my $other = join('', map { sprintf "YY%06dYY", $_ } (1 .. 200000));

$t->write_file('big.bin', $big);
$t->write_file('other.bin', $other);
$t->write_file('ssi.html',
	'head<!--# include virtual="/other.bin?ssi" -->tail');

my $module_tests = $module ? 3 : 0;

$t->run()->plan(11 + $module_tests);

###############################################################################

# a large file in one stream

my $s = h2(8443);
my $sid = open_stream($s, '/big.bin?h2');
my %r = read_streams($s, $sid);

is($r{$sid}{status}, 200, 'big status');
is(digest($r{$sid}{body}), digest($big), 'big body');

# two large files in parallel streams on one connection

$s = h2(8443);
my $sid1 = open_stream($s, '/big.bin?h2-parallel');
my $sid2 = open_stream($s, '/other.bin?h2-parallel');
%r = read_streams($s, $sid1, $sid2);

is(digest($r{$sid1}{body}), digest($big), 'parallel first body');
is(digest($r{$sid2}{body}), digest($other), 'parallel second body');

# a range

$s = h2(8443);
$sid = open_stream($s, '/big.bin?h2-range', 'bytes=12345-1234567');
%r = read_streams($s, $sid);

is($r{$sid}{status}, 206, 'range status');
is(digest($r{$sid}{body}), digest(substr($big, 12345, 1222223)), 'range body');

# SSI: the included file comes from a subrequest, between memory buffers

$s = h2(8443);
$sid = open_stream($s, '/ssi.html');
%r = read_streams($s, $sid);

is(digest($r{$sid}{body}), digest("head${other}tail"), 'ssi body');

# a small socket send buffer, a client that starts reading late, and a
# flow control window that opens in steps

$s = h2(8444);
$sid = open_stream($s, '/big.bin?h2-sndbuf');
select undef, undef, undef, 0.5;
%r = read_streams($s, $sid);

is(digest($r{$sid}{body}), digest($big), 'sndbuf body');

$s = h2(8444, 'stepwise');
$sid = open_stream($s, '/big.bin?h2-window');
%r = read_streams($s, $sid);

is(digest($r{$sid}{body}), digest($big), 'window steps body');

# a stream reset while its file is being sent, then another one

$s = h2(8444);
$sid = open_stream($s, '/big.bin?h2-reset');
select undef, undef, undef, 0.2;
$s->h2_rst($sid, 8);
$sid = open_stream($s, '/other.bin?h2-after-reset');
%r = read_streams($s, $sid);

is($r{$sid}{status}, 200, 'after reset status');
is(digest($r{$sid}{body}), digest($other), 'after reset body');

# the module's variables, from the access log

SKIP: {
skip 'no ktls module', $module_tests unless $module;

$t->stop();

my %log = map { (split ' ', $_, 2)[0] => [ split ' ', $_ ] }
	split /\n/, $t->read_file('ktls.log');

my @sendfile = grep { defined $log{$_} }
	qw!/big.bin?h2 /big.bin?h2-sndbuf /big.bin?h2-range!;
my @tx = map { $log{$_}[3] } @sendfile;

is(scalar(grep { $_ eq '0' || $_ eq '1' } @tx), scalar @tx, 'ktls_tx values');

SKIP: {
skip 'no kernel TLS expected', 1 unless $ENV{TEST_NGINX_KTLS_KERNEL}
	&& $ktls_option;

is(join(' ', @tx), join(' ', ('1') x @tx), 'ktls_tx on a kTLS kernel');

}

# without kernel TLS nothing goes with SSL_sendfile(); with it, the module
# may still copy DATA frames into full TLS records rather than send them
# with SSL_sendfile(), each of which ends a record

is(join(' ', map { $log{$_}[3] eq '1' || $log{$_}[4] !~ /[1-9]/ ? 'ok' : $_ }
	@sendfile), join(' ', ('ok') x @sendfile), 'ktls_sendfile_bytes');

}

###############################################################################

# an HTTP/2 connection over TLS; a "stepwise" one keeps the flow control
# windows at their initial 64k and gives back only what arrived (see
# read_streams), the others open them wide

sub h2 {
	my ($port, $stepwise) = @_;

	my $s = Test::Nginx::HTTP2->new(port($port), SSL => 1, alpn => 'h2')
		or return undef;

	$s->{test_stepwise} = $stepwise;
	$s->h2_window(2**30) unless $stepwise;

	return $s;
}

sub open_stream {
	my ($s, $uri, $range) = @_;

	my @headers = (
		{ name => ':method', value => 'GET', mode => 0 },
		{ name => ':scheme', value => 'https', mode => 0 },
		{ name => ':path', value => $uri, mode => 1 },
		{ name => ':authority', value => 'localhost', mode => 1 });
	push @headers, { name => 'range', value => $range, mode => 1 }
		if defined $range;

	my $sid = $s->new_stream({ headers => \@headers });
	$s->h2_window(2**30, $sid) unless $s->{test_stepwise};

	return $sid;
}

# reads the given streams to their end; returns their status and body

sub read_streams {
	my ($s, @sids) = @_;
	my %r = map { $_ => { body => '' } } @sids;
	my %open = map { $_ => 1 } @sids;
	my $stepwise = $s->{test_stepwise};
	my $idle = 0;

	# stepwise, frames are read as they come to give the window back;
	# either way, 8 seconds without a frame end the wait

	while (%open && $idle < 8) {
		my $frames = $s->read(all => [ map { { sid => $_, fin => 1 } }
			keys %open ], wait => $stepwise ? 0.2 : 8);

		if (!@$frames) {
			$idle += $stepwise ? 0.2 : 8;
			next;
		}

		$idle = 0;

		for my $f (@$frames) {
			next unless $r{$f->{sid}};

			if ($f->{type} eq 'HEADERS') {
				$r{$f->{sid}}{status} = $f->{headers}{':status'};
			}

			if ($f->{type} eq 'DATA') {
				$r{$f->{sid}}{body} .= $f->{data};

				# give the window back only for what arrived

				if ($stepwise && $f->{length}) {
					$s->h2_window($f->{length}, $f->{sid});
					$s->h2_window($f->{length});
				}
			}

			delete $open{$f->{sid}}
				if $f->{flags} & 0x1
				&& ($f->{type} eq 'DATA' || $f->{type} eq 'HEADERS');

			delete $open{$f->{sid}} if $f->{type} eq 'RST_STREAM';
		}
	}

	return %r;
}

sub digest {
	my ($data) = @_;
	return 'undef' unless defined $data;
	return length($data) . ':' . md5_hex($data);
}

###############################################################################
