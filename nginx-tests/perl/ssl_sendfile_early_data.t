#!/usr/bin/perl

# Tests for http ssl module, TLSv1.3 early data (0-RTT) over TCP with
# sendfile: a request that comes in early data, whose body comes later, and
# whose large response is read slowly, so that writing the response blocks
# before the handshake is complete.  With kernel TLS the file goes out with
# SSL_sendfile() ("sendfile on" with "ssl_conf_command Options KTLS").
#
# The client is "openssl s_client" (-sess_out, then -sess_in -early_data).
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

my $t = Test::Nginx->new()->has(qw/http http_ssl ssi/)
	->has_daemon('openssl');

plan(skip_all => 'no early data in OpenSSL')
	unless $t->has_module('OpenSSL') && $t->has_feature('openssl:1.1.1');
plan(skip_all => 'no -early_data in openssl s_client')
	unless `openssl s_client -help 2>&1` =~ /-early_data/;

my $module = $ENV{TEST_NGINX_KTLS_MODULE};

# the KTLS option is known to OpenSSL 3.0 and newer

my $ktls_option = $t->has_feature('openssl:3.0.0') && $t->has_version('1.19.4')
	? 'ssl_conf_command Options KTLS;' : '';

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
    ssl_protocols TLSv1.3;
    ssl_early_data on;

    %%KTLS_OPTION%%

%%KTLS_LOG%%

    server {
        listen       127.0.0.1:8443 ssl;
        server_name  localhost;

        sendfile on;

        location = /ssi.html {
            ssi on;
        }
    }

    server {
        listen       127.0.0.1:8444 ssl sndbuf=16k;
        server_name  localhost;

        sendfile on;

        location = /ssi.html {
            ssi on;
        }
    }
}

EOF

$conf =~ s/%%KTLS_OPTION%%/$ktls_option/;
$conf =~ s/%%KTLS_LOG%%\n/$ktls_log/;

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

my $big = join('', map { sprintf "XX%06dXX", $_ } (1 .. 104858));

$t->write_file('big.bin', $big);
$t->write_file('index.html', '');
$t->write_file('ssi.html',
	'head<!--# include virtual="/big.bin?ssi" -->tail');

my $module_tests = $module ? 3 : 0;

$t->run()->plan(8 + $module_tests);

###############################################################################

# a session to resume, with a ticket that allows early data

for my $port (8443, 8444) {
	s_client($d, $port, "GET / HTTP/1.0\r\n\r\n", sess_out => "sess$port.pem");
}

# a GET whose headers come in early data and whose body comes a second later;
# the server accepted the early data when the client sent EndOfEarlyData
# (whether the response starts before the handshake is complete depends on
# how the client's packets arrive)

my $early = 0;

my $r = early($d, 8443, '/big.bin?early');
like(headers($r), qr/^HTTP\/1.1 200 /, 'early data status');
is(body_digest($r), digest($big), 'early data body');

$r = early($d, 8443, '/ssi.html');
like(headers($r), qr/Transfer-Encoding: chunked/, 'early data ssi chunked');
is(digest(http_content($r)), digest("head${big}tail"), 'early data ssi body');

# the same with a small socket send buffer

$r = early($d, 8444, '/big.bin?early-sndbuf');
is(body_digest($r), digest($big), 'sndbuf early data body');

$r = early($d, 8444, '/ssi.html');
is(digest(http_content($r)), digest("head${big}tail"),
	'sndbuf early data ssi body');

is($early, 4, 'early data accepted');

# after a full handshake

$r = s_client($d, 8444, "GET /big.bin?full HTTP/1.0\r\n\r\n");
is(body_digest($r), digest($big), 'full handshake body');

# the module's variables, from the access log

SKIP: {
skip 'no ktls module', $module_tests unless $module;

$t->stop();

my %log = map { (split ' ', $_, 2)[0] => [ split ' ', $_ ] }
	split /\n/, $t->read_file('ktls.log');

my @sendfile = grep { defined $log{$_} }
	qw!/big.bin?early /big.bin?early-sndbuf /big.bin?full!;
my @tx = map { $log{$_}[3] } @sendfile;

is(scalar(grep { $_ eq '0' || $_ eq '1' } @tx), scalar @tx, 'ktls_tx values');

SKIP: {
skip 'no kernel TLS expected', 1 unless $ENV{TEST_NGINX_KTLS_KERNEL}
	&& $ktls_option;

is(join(' ', @tx), join(' ', ('1') x @tx), 'ktls_tx on a kTLS kernel');

}

# with kernel TLS a file after a full handshake goes with SSL_sendfile(),
# without it none does; in 0-RTT the module may copy instead, for as long
# as the server has not read the end of the early data

is(join(' ', map { ($log{$_}[3] eq '1') == ($log{$_}[4] > 0)
	|| $_ ne '/big.bin?full' && $log{$_}[4] !~ /[1-9]/ ? 'ok' : $_ }
	@sendfile), join(' ', ('ok') x @sendfile), 'ktls_sendfile_bytes');

}

###############################################################################

# a request in early data with a 10-byte body that follows a second later,
# over a session saved before; the response is read slowly

sub early {
	my ($d, $port, $uri) = @_;

	open my $fh, '>', "$d/early$port.txt"
		or die "Can't create early$port.txt: $!\n";
	print $fh "GET $uri HTTP/1.1\r\n"
		. "Host: localhost\r\n"
		. "Content-Length: 10\r\n"
		. "Connection: close\r\n\r\n";
	close $fh;

	unlink "$d/msg$port.txt";

	my $r = s_client($d, $port, "0123456789", delay => 1,
		sess_in => "sess$port.pem", early_data => "early$port.txt",
		msg => "msg$port.txt");

	$early++ if -e "$d/msg$port.txt"
		&& `cat $d/msg$port.txt` =~ /EndOfEarlyData/;
	return $r;
}

# runs "openssl s_client" in the test directory; whatever it prints (with
# -quiet, just what the server sent) is read late and then in small pieces
# with pauses in between, so that the server's writes block

sub s_client {
	my ($d, $port, $input, %extra) = @_;

	my $args = "-connect 127.0.0.1:" . port($port) . " -quiet";
	$args .= " -sess_out $d/$extra{sess_out}" if $extra{sess_out};
	$args .= " -sess_in $d/$extra{sess_in}" if $extra{sess_in};
	$args .= " -early_data $d/$extra{early_data}" if $extra{early_data};
	$args .= " -msg -msgfile $d/$extra{msg}" if $extra{msg};

	open my $fh, '>', "$d/input$port.txt"
		or die "Can't create input$port.txt: $!\n";
	print $fh $input;
	close $fh;

	my $delay = $extra{delay} || 0;
	my ($pid, $reply) = (undef, '');

	eval {
		local $SIG{ALRM} = sub { die "timeout\n" };
		alarm(60);

		$pid = open(my $out, '-|', "(sleep $delay; cat $d/input$port.txt) "
			. "| openssl s_client $args 2>>$d/s_client.err")
			or die "Can't run openssl s_client: $!\n";

		select undef, undef, undef, $delay + 0.3;

		my $buf;
		while (sysread($out, $buf, 16384)) {
			$reply .= $buf;
			select undef, undef, undef, 0.01;
		}

		close $out;
		alarm(0);
	};
	alarm(0);
	if ($@) {
		log_in("died: $@");
		kill 'TERM', $pid if $pid;
		return undef;
	}

	log_in($reply);
	return $reply;
}

# the headers of a response, to keep large bodies out of test diagnostics

sub headers {
	my ($r) = @_;
	return undef unless defined $r;
	return $r =~ /^(.*?\x0d\x0a\x0d\x0a)/s ? $1 : $r;
}

sub digest {
	my ($data) = @_;
	return 'undef' unless defined $data;
	return length($data) . ':' . md5_hex($data);
}

sub body_digest {
	my ($r) = @_;
	return 'undef' unless defined $r;
	return digest($r =~ /\x0d\x0a\x0d\x0a(.*)\z/s ? $1 : undef);
}

###############################################################################
