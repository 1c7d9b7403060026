#!/usr/bin/perl

# Tests for http ssl module with sendfile: file responses over TLS, which
# go out with SSL_sendfile() when kernel TLS is in use ("sendfile on" with
# "ssl_conf_command Options KTLS"), and through SSL_write() otherwise.
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
use Test::Nginx qw/ :DEFAULT http_content /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/http http_ssl ssi socket_ssl/)
	->has_daemon('openssl');

my $module = $ENV{TEST_NGINX_KTLS_MODULE};

# the KTLS option is known to OpenSSL 3.0 and newer

my $ktls_option = $t->has_module('OpenSSL') && $t->has_feature('openssl:3.0.0')
	&& $t->has_version('1.19.4') ? 'ssl_conf_command Options KTLS;' : '';

my $ktls_log = $module ? <<'EOF' : '';
    log_format ktls '$request_uri $status $body_bytes_sent '
                    '$ktls_tx $ktls_sendfile_bytes';
EOF

my $ktls_access_log = $module ? 'access_log %%TESTDIR%%/ktls.log ktls;' : '';

my $ktls_off_server = $module ? <<'EOF' : '';
    server {
        listen       127.0.0.1:8446 ssl;
        server_name  localhost;

        sendfile on;
        ktls off;

        access_log %%TESTDIR%%/ktls.log ktls;
    }
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

    %%KTLS_OPTION%%

%%KTLS_LOG%%

    server {
        listen       127.0.0.1:8443 ssl;
        server_name  localhost;

        ssl_protocols TLSv1.2 TLSv1.3;

        sendfile on;

        %%KTLS_ACCESS_LOG%%

        location = /ssi.html {
            ssi on;
        }
    }

    server {
        # with sndbuf=8k (16k in the kernel), Linux 6.1 kernel TLS never
        # reports the socket writable again once a 16k record is pending

        listen       127.0.0.1:8444 ssl sndbuf=32k;
        server_name  localhost;

        ssl_protocols TLSv1.2 TLSv1.3;

        sendfile on;
        sendfile_max_chunk 128k;

        %%KTLS_ACCESS_LOG%%

        location = /ssi-mid.html {
            ssi on;
        }
    }

    server {
        listen       127.0.0.1:8445 ssl;
        server_name  localhost;

        ssl_protocols TLSv1.2;

        sendfile on;

        %%KTLS_ACCESS_LOG%%
    }

%%KTLS_OFF_SERVER%%
}

EOF

$conf =~ s/%%KTLS_OPTION%%/$ktls_option/;
$conf =~ s/%%KTLS_LOG%%\n/$ktls_log/;
$conf =~ s/%%KTLS_ACCESS_LOG%%/$ktls_access_log/g;
$conf =~ s/%%KTLS_OFF_SERVER%%\n/$ktls_off_server/;

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

my $big = join('', map { sprintf "XX%06dXX", $_ } (1 .. 500000));
my $mid = join('', map { sprintf "XX%06dXX", $_ } (1 .. 104858));
my $small = 'SEE-THIS' x 16;

$t->write_file('big.bin', $big);
$t->write_file('mid.bin', $mid);
$t->write_file('small.bin', $small);
$t->write_file('empty.bin', '');
$t->write_file('ssi.html',
	'head<!--# include virtual="/big.bin?ssi" -->tail');
$t->write_file('ssi-mid.html',
	'head<!--# include virtual="/mid.bin?ssi" -->tail');

my $module_tests = $module ? 6 : 0;

$t->run()->plan(20 + $module_tests);

###############################################################################

# a large file, more than the 2m sendfile_max_chunk default

my $r = get('/big.bin?plain', 8443);
like(headers($r), qr/^HTTP\/1.1 200 .*Content-Length: 5000000\x0d?$/ms,
	'big status');
is(body_digest($r), digest($big), 'big body');

is(body_digest(get('/small.bin', 8443)), digest($small), 'small body');
is(body_digest(get('/empty.bin', 8443)), digest(''), 'empty file');

unlike(http_head('/big.bin', SSL => 1), qr/XX000001XX/, 'head no body');

# ranges

$r = get('/big.bin?range', 8443, 'Range: bytes=100000-2200099');
like(headers($r), qr/^HTTP\/1.1 206 /, 'range status');
is(body_digest($r), digest(substr($big, 100000, 2100100)), 'range body');

$r = get('/big.bin?multirange', 8443, 'Range: bytes=0-9,4999990-4999999');
like($r, qr/^HTTP\/1.1 206 /, 'multipart range status');
like($r, qr!Content-Range: bytes 0-9/5000000\x0d\x0a\x0d\x0aXX000001XX\x0d\x0a!,
	'multipart range first');
like($r, qr!bytes 4999990-4999999/5000000\x0d\x0a\x0d\x0aXX500000XX\x0d\x0a--!,
	'multipart range last');

# SSI: the included file comes from a subrequest, between memory buffers

is(body_digest(get('/ssi.html', 8443)), digest("head${big}tail"), 'ssi body');

# the same in chunked transfer encoding

$r = http(<<EOF, SSL => 1);
GET /ssi.html HTTP/1.1
Host: localhost
Connection: close

EOF

like(headers($r), qr/Transfer-Encoding: chunked/, 'ssi chunked');
is(digest(http_content($r)), digest("head${big}tail"), 'ssi chunked body');

# two pipelined requests on a keepalive connection

$r = http(<<EOF, SSL => 1);
GET /big.bin?keepalive1 HTTP/1.1
Host: localhost

GET /big.bin?keepalive2 HTTP/1.1
Host: localhost
Connection: close

EOF

my @bodies = split_responses($r);
is(scalar @bodies, 2, 'keepalive responses');
is(join(' ', map { digest($_) } @bodies), digest($big) . ' ' . digest($big),
	'keepalive bodies');

# a small socket send buffer and a client that starts reading late:
# the file is sent in many partial writes

$r = get('/mid.bin?sndbuf', 8444, undef, 0.5);
is(body_digest($r), digest($mid), 'sndbuf body');

$r = get('/mid.bin?sndbuf-range', 8444, 'Range: bytes=100000-', 0.5);
is(body_digest($r), digest(substr($mid, 100000)), 'sndbuf range body');

$r = http(<<EOF, SSL => 1, PeerAddr => '127.0.0.1:' . port(8444), start => 1);
GET /ssi-mid.html HTTP/1.1
Host: localhost
Connection: close

EOF

select undef, undef, undef, 0.5;
is(digest(http_content(read_all($r))), digest("head${mid}tail"),
	'sndbuf ssi chunked body');

# TLSv1.2, where kernel TLS handles both directions

$r = get('/big.bin?tls12', 8445);
like(headers($r), qr/^HTTP\/1.1 200 /, 'tlsv1.2 status');
is(body_digest($r), digest($big), 'tlsv1.2 body');

# the module's variables, from the access log

SKIP: {
skip 'no ktls module', $module_tests unless $module;

is(body_digest(get('/big.bin?off', 8446)), digest($big), 'ktls off body');

$t->stop();

my %log = map { (split ' ', $_, 2)[0] => [ split ' ', $_ ] }
	split /\n/, $t->read_file('ktls.log');

my @sendfile = grep { defined $log{$_} }
	qw!/big.bin?plain /mid.bin?sndbuf /big.bin?tls12 /big.bin?range!;
my @tx = map { $log{$_}[3] } @sendfile;

is(scalar(grep { $_ eq '0' || $_ eq '1' } @tx), scalar @tx, 'ktls_tx values');

SKIP: {
skip 'no kernel TLS expected', 1 unless $ENV{TEST_NGINX_KTLS_KERNEL}
	&& $ktls_option;

is(join(' ', @tx), join(' ', ('1') x @tx), 'ktls_tx on a kTLS kernel');

}

# with kernel TLS the file goes with SSL_sendfile(), without it none does

is(join(' ', map { ($log{$_}[3] eq '1') == ($log{$_}[4] > 0) ? 'ok' : $_ }
	@sendfile), join(' ', ('ok') x @sendfile), 'ktls_sendfile_bytes');

ok((grep { $log{$_}[4] <= $log{$_}[2] } @sendfile) == @sendfile,
	'ktls_sendfile_bytes not above body bytes');

# "-" where the module leaves the connection to nginx

like($log{'/big.bin?off'}[4], qr/^[-0]$/, 'ktls off sendfile bytes');

}

###############################################################################

# an HTTP/1.0 GET over TLS to the given port, optionally with a header line
# and a delay before the response is read

sub get {
	my ($uri, $port, $header, $delay) = @_;
	$header = defined $header ? "$header\x0d\x0a" : '';

	my $request = "GET $uri HTTP/1.0\x0d\x0a"
		. "Host: localhost\x0d\x0a"
		. $header . "\x0d\x0a";

	my $s = http($request, SSL => 1, start => 1,
		PeerAddr => '127.0.0.1:' . port($port))
		or return undef;

	select undef, undef, undef, $delay if $delay;

	return read_all($s);
}

# reads a response to its end, like http_end(), but allows up to a minute
# for it: with a small socket buffer, kernels with slow system calls (such
# as User-Mode Linux) take longer than the 8 seconds http_end() allows

sub read_all {
	my ($s) = @_;
	my $reply = '';

	eval {
		local $SIG{ALRM} = sub { die "timeout\n" };
		alarm(60);

		my $buf;
		while ($s->sysread($buf, 65536)) {
			$reply .= $buf;
		}

		$s->close();
		alarm(0);
	};
	alarm(0);
	if ($@) {
		log_in("died: $@");
		return undef;
	}

	log_in($reply);
	return $reply;
}

sub digest {
	my ($data) = @_;
	return 'undef' unless defined $data;
	return length($data) . ':' . md5_hex($data);
}

# the headers of a response, to keep large bodies out of test diagnostics

sub headers {
	my ($r) = @_;
	return undef unless defined $r;
	return $r =~ /^(.*?\x0d\x0a\x0d\x0a)/s ? $1 : $r;
}

sub body_digest {
	my ($r) = @_;
	return 'undef' unless defined $r;
	return digest($r =~ /\x0d\x0a\x0d\x0a(.*)\z/s ? $1 : undef);
}

# splits pipelined responses with Content-Length into their bodies

sub split_responses {
	my ($r) = @_;
	my @bodies;

	while (defined $r
		&& $r =~ /\G(HTTP\/1.1 .*?\x0d\x0a\x0d\x0a)/gcs)
	{
		my $headers = $1;
		last unless $headers =~ /Content-Length: (\d+)/i;
		push @bodies, substr($r, pos($r), $1);
		pos($r) += $1;
	}

	return @bodies;
}

###############################################################################
