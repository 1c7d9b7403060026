//! TLS client connections with the knobs the tests turn: protocol version, cipher, receive
//! buffer size, ALPN, session resumption and TLS 1.3 early data; and the faults a client can
//! commit on the wire: an alert, a torn or forged record, a reset.

use crate::config::expect_kernel;
use foreign_types::ForeignTypeRef;
use openssl::ssl::{
    Ssl, SslContext, SslMethod, SslOptions, SslSession, SslSessionCacheMode, SslStream,
    SslVerifyMode, SslVersion,
};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::ffi::c_int;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub const BOTH: [TlsVersion; 2] = [TlsVersion::Tls12, TlsVersion::Tls13];

    fn openssl(self) -> SslVersion {
        match self {
            TlsVersion::Tls12 => SslVersion::TLS1_2,
            TlsVersion::Tls13 => SslVersion::TLS1_3,
        }
    }

    /// As nginx's `$ssl_protocol` names it.
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ClientOpts {
    pub version: TlsVersion,
    /// A TLS 1.3 ciphersuite name or a TLS 1.2 cipher list, depending on `version`.
    pub cipher: Option<String>,
    /// SO_RCVBUF, set before connect() so the TCP window is negotiated with it.
    pub rcvbuf: Option<usize>,
    /// Offer ALPN "h2".
    pub h2: bool,
    /// Timeout of every connect, read and write: nothing waits forever.
    pub timeout: Duration,
    /// Ask OpenSSL for kernel TLS on the client's socket (a kTLS kernel only): what lets the
    /// client send a record of its choosing, such as an alert, with the session's keys.
    pub kernel_tls: bool,
    /// TLS 1.3 record padding: every record the client sends is padded to a multiple of
    /// this many bytes where the record's limit leaves room (OpenSSL's block padding).
    pub pad_to: Option<usize>,
}

impl ClientOpts {
    pub fn new(version: TlsVersion) -> ClientOpts {
        ClientOpts {
            version,
            cipher: None,
            rcvbuf: None,
            h2: false,
            // Slow reads under UML take longer; a hang is still caught.
            timeout: Duration::from_secs(if expect_kernel() { 120 } else { 30 }),
            kernel_tls: false,
            pad_to: None,
        }
    }

    pub fn cipher(mut self, c: &str) -> ClientOpts {
        self.cipher = Some(c.to_string());
        self
    }

    pub fn rcvbuf(mut self, bytes: usize) -> ClientOpts {
        self.rcvbuf = Some(bytes);
        self
    }

    pub fn h2(mut self) -> ClientOpts {
        self.h2 = true;
        self
    }

    pub fn kernel_tls(mut self) -> ClientOpts {
        self.kernel_tls = true;
        self
    }

    pub fn pad_to(mut self, block: usize) -> ClientOpts {
        self.pad_to = Some(block);
        self
    }

    fn context(&self, latest: Arc<Mutex<Option<SslSession>>>) -> SslContext {
        let mut b = SslContext::builder(SslMethod::tls_client()).expect("SSL_CTX_new");
        b.set_verify(SslVerifyMode::NONE);
        b.set_min_proto_version(Some(self.version.openssl()))
            .expect("min version");
        b.set_max_proto_version(Some(self.version.openssl()))
            .expect("max version");
        if let Some(c) = &self.cipher {
            match self.version {
                TlsVersion::Tls13 => b.set_ciphersuites(c),
                TlsVersion::Tls12 => b.set_cipher_list(c),
            }
            .unwrap_or_else(|e| panic!("cipher {c}: {e}"));
        }
        if self.h2 {
            b.set_alpn_protos(b"\x02h2").expect("ALPN");
        }
        if self.kernel_tls {
            b.set_options(SslOptions::from_bits_retain(SSL_OP_ENABLE_KTLS));
        }
        if let Some(block) = self.pad_to {
            // SAFETY: the builder owns a live SSL_CTX.
            let ok = unsafe { SSL_CTX_set_block_padding(b.as_ptr(), block) };
            assert_eq!(ok, 1, "SSL_CTX_set_block_padding({block})");
        }
        // TLS 1.3 tickets arrive after the handshake, during a read; the callback keeps the
        // newest so that a later connection can resume (and send early data).
        b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
        b.set_new_session_callback(move |_, session| {
            *latest.lock().unwrap() = Some(session);
        });
        b.build()
    }

    fn tcp(&self, port: u16) -> io::Result<TcpStream> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        if let Some(n) = self.rcvbuf {
            s.set_recv_buffer_size(n)?;
        }
        s.connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)).into(),
            self.timeout,
        )?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.set_nodelay(true)?;
        Ok(s.into())
    }
}

/// openssl/ssl.h's SSL_OP_ENABLE_KTLS and openssl/bio.h's BIO_CTRL_GET_KTLS_SEND, which
/// openssl-sys does not name.
const SSL_OP_ENABLE_KTLS: u64 = 1 << 3;
const BIO_CTRL_GET_KTLS_SEND: c_int = 73;
/// linux/tls.h: the control message that gives a record sent through kTLS its type.
const TLS_SET_RECORD_TYPE: c_int = 1;
/// The TLS record content types a test sends.
pub const RECORD_ALERT: u8 = 21;
pub const RECORD_APPLICATION_DATA: u8 = 23;

extern "C" {
    // libssl's, not wrapped by openssl-sys.
    fn SSL_key_update(s: *mut openssl_sys::SSL, updatetype: std::ffi::c_int) -> std::ffi::c_int;
    fn SSL_set0_wbio(s: *mut openssl_sys::SSL, wbio: *mut openssl_sys::BIO);
    fn SSL_CTX_set_block_padding(ctx: *mut openssl_sys::SSL_CTX, block_size: usize) -> c_int;
}

/// An established TLS connection.
pub struct TlsConn {
    pub stream: SslStream<TcpStream>,
    latest_session: Arc<Mutex<Option<SslSession>>>,
}

impl TlsConn {
    /// A full handshake.
    pub fn connect(port: u16, opts: &ClientOpts) -> io::Result<TlsConn> {
        let latest = Arc::new(Mutex::new(None));
        let ssl = Ssl::new(&opts.context(latest.clone())).map_err(io::Error::other)?;
        let mut stream = SslStream::new(ssl, opts.tcp(port)?).map_err(io::Error::other)?;
        if opts.kernel_tls {
            write_through_socket_bio(&stream)?;
        }
        stream
            .connect()
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(TlsConn {
            stream,
            latest_session: latest,
        })
    }

    /// Resumes `session`; with `early` non-empty, sends it as TLS 1.3 early data (0-RTT) before
    /// completing the handshake. Returns the connection once the handshake is complete.
    pub fn resume(
        port: u16,
        opts: &ClientOpts,
        session: &SslSession,
        early: &[u8],
    ) -> io::Result<TlsConn> {
        let latest = Arc::new(Mutex::new(None));
        let mut ssl = Ssl::new(&opts.context(latest.clone())).map_err(io::Error::other)?;
        // SAFETY: the session comes from a context with the same protocol settings.
        unsafe { ssl.set_session(session) }.map_err(io::Error::other)?;
        ssl.set_connect_state();
        let mut stream = SslStream::new(ssl, opts.tcp(port)?).map_err(io::Error::other)?;
        let mut sent = 0;
        while sent < early.len() {
            sent += stream
                .write_early_data(&early[sent..])
                .map_err(|e| io::Error::other(format!("SSL_write_early_data: {e:?}")))?;
        }
        stream
            .connect()
            .map_err(|e| io::Error::other(format!("SSL_connect: {e}")))?;
        Ok(TlsConn {
            stream,
            latest_session: latest,
        })
    }

    /// A copy of the newest session (ticket) the server gave this connection, if one arrived.
    ///
    /// A copy through DER, not the shared object: when this connection's SSL or context is
    /// freed, OpenSSL marks its sessions not resumable, and SSL_write_early_data() with such a
    /// session then fails.
    pub fn session(&self) -> Option<SslSession> {
        let latest = self.latest_session.lock().unwrap();
        let der = latest.as_ref()?.to_der().expect("i2d_SSL_SESSION");
        Some(SslSession::from_der(&der).expect("d2i_SSL_SESSION"))
    }

    pub fn reused(&self) -> bool {
        self.stream.ssl().session_reused()
    }

    pub fn cipher(&self) -> String {
        self.stream
            .ssl()
            .current_cipher()
            .map(|c| c.name().to_string())
            .unwrap_or_default()
    }

    /// Sends a TLS 1.3 KeyUpdate now: the client's sending key moves on, and with `requested`
    /// the server is asked to move its own.
    pub fn key_update(&mut self, requested: bool) -> io::Result<()> {
        // SSL_KEY_UPDATE_REQUESTED, SSL_KEY_UPDATE_NOT_REQUESTED.
        let kind = if requested { 1 } else { 0 };
        let ssl = self.stream.ssl().as_ptr();
        // SAFETY: the stream's live SSL; SSL_do_handshake() writes the KeyUpdate on its
        // blocking socket.
        let (queued, sent) = unsafe {
            (
                SSL_key_update(ssl, kind),
                openssl_sys::SSL_do_handshake(ssl),
            )
        };
        if queued != 1 || sent != 1 {
            return Err(io::Error::other(format!(
                "SSL_key_update: {queued}, SSL_do_handshake: {sent}: {}",
                openssl::error::ErrorStack::get()
            )));
        }
        Ok(())
    }

    /// Writes all of `data` (bounded by the write timeout).
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data)?;
        self.stream.flush()
    }

    /// Sends an alert record (`level` 1 warning, 2 fatal; `description` as in RFC 8446 6) with
    /// the connection's keys, as the next record after what was sent. OpenSSL has no call
    /// for an arbitrary alert, so the record goes through the kernel: the connection must have
    /// been made with [`ClientOpts::kernel_tls`] and have got kTLS for sending.
    pub fn send_alert(&mut self, level: u8, description: u8) -> io::Result<()> {
        // SAFETY: the stream's live SSL and its BIO; the control only reads its kTLS flag.
        let kernel_sends = unsafe {
            let wbio = openssl_sys::SSL_get_wbio(self.stream.ssl().as_ptr());
            openssl_sys::BIO_ctrl(wbio, BIO_CTRL_GET_KTLS_SEND, 0, std::ptr::null_mut())
        } == 1;
        if !kernel_sends {
            return Err(io::Error::other("the client got no kTLS for sending"));
        }
        send_record_through_kernel(self.stream.get_ref(), RECORD_ALERT, &[level, description])
    }

    /// Writes `bytes` to the TCP connection under TLS, as they are: a record torn or forged.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.get_mut().write_all(bytes)
    }

    /// Ends the client's sending half with a FIN and nothing else (no close_notify).
    pub fn fin(&self) -> io::Result<()> {
        self.stream.get_ref().shutdown(Shutdown::Write)
    }

    /// Closes the connection with a reset (SO_LINGER 0), whatever is still unsent or unread.
    pub fn reset(self) -> io::Result<()> {
        SockRef::from(self.stream.get_ref()).set_linger(Some(Duration::ZERO))
    }
}

/// Gives `stream`'s SSL a socket BIO on its own fd for writing. OpenSSL sets kTLS up only on
/// a socket BIO, and the stream's BIO is the crate's own; reads keep going through that one,
/// from the same socket.
fn write_through_socket_bio(stream: &SslStream<TcpStream>) -> io::Result<()> {
    // SAFETY: the stream's fd outlives the BIO, which does not close it (BIO_NOCLOSE, 0);
    // SSL_set0_wbio takes the new BIO and drops the SSL's own reference to the old one, which
    // stays the read BIO.
    unsafe {
        let bio = openssl_sys::BIO_new_socket(stream.get_ref().as_raw_fd(), 0);
        if bio.is_null() {
            return Err(io::Error::other("BIO_new_socket failed"));
        }
        SSL_set0_wbio(stream.ssl().as_ptr(), bio);
    }
    Ok(())
}

/// sendmsg() of one record of `record_type` on a socket with kTLS for sending.
fn send_record_through_kernel(tcp: &TcpStream, record_type: u8, payload: &[u8]) -> io::Result<()> {
    // Room for one cmsghdr with a one-byte payload, aligned as the kernel reads it.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: payload.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(1) } as usize;
    // SAFETY: the control buffer is at least CMSG_SPACE(1) bytes, so the first header and its
    // data byte lie inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_TLS;
        (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as usize;
        *libc::CMSG_DATA(cmsg) = record_type;
    }
    // SAFETY: msg describes live buffers; the fd is the stream's open socket.
    let sent = unsafe { libc::sendmsg(tcp.as_raw_fd(), &msg, 0) };
    match sent {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize == payload.len() => Ok(()),
        n => Err(io::Error::other(format!(
            "sendmsg: {n} of {} bytes",
            payload.len()
        ))),
    }
}
