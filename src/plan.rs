//! The send-chain algorithm, free of nginx and OpenSSL.
//!
//! This decides what goes out next and how: memory bytes are gathered into the
//! connection's TLS buffer (`ssl_buffer_size`) and written as TLS records,
//! neighbouring file buffers go out with one `SSL_sendfile()` when kTLS may be
//! used directly, and file bytes are read into the buffer when it may not.  It
//! follows `ngx_ssl_send_chain()` (nginx 1.28) step by step, so that flushing,
//! `limit` and the "buffered" state behave exactly as there.
//!
//! Where it differs, on purpose:
//! - A file buffer that `SSL_sendfile()` must not take right now (0-RTT,
//!   handshake messages pending) is read into the buffer; nginx never sees
//!   one without kTLS.
//! - With kTLS, the buffer is written to the socket directly, and with
//!   `MSG_MORE` when file data follows in the same call: the kernel keeps the
//!   TLS record open, so a response header, a chunk-size line or an HTTP/2
//!   frame header shares its record with the file data after it instead of
//!   going out as a record (and a system call) of its own.
//! - With kTLS, runs of file data shorter than `sendfile_min` are read into
//!   the buffer rather than sent with `SSL_sendfile()`: every `sendfile()`
//!   ends a TLS record, so HTTP/2's 8k DATA frames would otherwise each make
//!   their own records, where the buffer packs them into full 16k records.
//! - With `aio threads`, a sendfile or a read into the buffer may go to a
//!   thread of nginx's pool ([`Io::Offloaded`], [`Read::Offloaded`]).  Until
//!   it is done ([`Transport::busy`]) nothing is written and the buffer is
//!   not touched; a sendfile's result is counted first thing afterwards
//!   ([`Transport::collect`]), as nginx's `ngx_linux_sendfile_thread()`
//!   counts it.
//!
//! The nginx side implements [`Chain`] over `ngx_chain_t` and [`Transport`]
//! over the SSL connection; unit tests implement both over plain vectors.

/// What kind of data a buffer holds, as far as sending is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No data: a flush, last_buf or sync marker (`ngx_buf_special()`).
    Special,
    /// Bytes in memory.
    Memory,
    /// Bytes in a file; `in_memory` says whether the same bytes are also in
    /// memory (then they can be copied rather than read when sendfile is out).
    File { in_memory: bool },
}

/// The head of the chain as the algorithm sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub kind: Kind,
    /// Bytes left in this buffer (`ngx_buf_size()`).
    pub size: u64,
    /// The buffer asks for everything before it to be sent now.
    pub flush: bool,
}

/// The chain of buffers to send, consumed from the front.
pub trait Chain {
    /// The first buffer left, if any.
    fn head(&self) -> Option<Head>;
    /// Drops the head (a special buffer).
    fn skip(&mut self);
    /// Copies the head's memory bytes into `dst` (at most `dst.len()`), and
    /// advances past them.
    fn copy_memory(&mut self, dst: &mut [u8]);
    /// Reads the head's next `len` file bytes into `mem[at..at + len]` and
    /// advances past them.  The read may wait for [`Chain::finish_reads`],
    /// so that neighbouring parts of a file become one system call.  When the
    /// reads waiting before this one had to be finished first and went to a
    /// thread, the answer is [`Read::Offloaded`] and the head is left as it
    /// was.
    fn read_file(&mut self, mem: &mut [u8], at: usize, len: usize) -> Result<Read, Fatal>;
    /// Completes every read that [`Chain::read_file`] left waiting, or hands
    /// them to a thread ([`Read::Offloaded`]).  A short read means the file
    /// shrank: the implementation logs why and the connection is closed.
    fn finish_reads(&mut self, mem: &mut [u8]) -> Result<Read, Fatal>;
    /// How many bytes the run of neighbouring file buffers starting at the
    /// head holds, at most `max` (`ngx_chain_coalesce_file()`).
    fn file_run(&self, max: u64) -> u64;
    /// Marks `n` bytes from the head as sent (`ngx_chain_update_sent()`).
    fn consume(&mut self, n: u64);
}

/// Outcome of one write to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// That many bytes were accepted (at least one).
    Sent(usize),
    /// Nothing was accepted; wait for the event that OpenSSL asked for.
    Again,
    /// A thread of nginx's pool sends it; its result comes from
    /// [`Transport::collect`] once [`Transport::busy`] is over.  Only
    /// [`Transport::sendfile`] answers this.
    Offloaded,
}

/// Outcome of reading file bytes into the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// The bytes are in the buffer, or queued to be read by
    /// [`Chain::finish_reads`] in this call.
    Done,
    /// A thread of nginx's pool reads them: the buffer may not be written
    /// until [`Transport::busy`] is over.
    Offloaded,
}

/// What a thread's sendfile left to count, from [`Transport::collect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collected {
    /// No sendfile result is waiting.
    Nothing,
    /// That many bytes of the chain's head went out.
    Sent(u64),
    /// The socket was full: wait until it is writable.
    Again,
}

/// The connection failed; the implementation has logged why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fatal;

/// The TLS connection that the bytes go to.
pub trait Transport<C: Chain> {
    /// Whether a thread still works for the connection (a sendfile, or a
    /// read into the buffer): nothing may be written meanwhile.
    fn busy(&mut self) -> Result<bool, Fatal>;
    /// The result of the sendfile a thread finished, if it has not been
    /// counted yet; it is about the chain's head as it was when posted.
    fn collect(&mut self, chain: &C) -> Result<Collected, Fatal>;
    /// Whether the kernel may be written to directly now (with
    /// [`Transport::write_kernel`] and [`Transport::sendfile`]): kTLS is on
    /// for sending and OpenSSL has nothing of its own still to write.
    fn kernel_allowed(&mut self) -> bool;
    /// Sends `data` as TLS records through OpenSSL (`SSL_write()`, or
    /// `SSL_write_early_data()` while the connection is in 0-RTT).
    fn write(&mut self, data: &[u8]) -> Result<Io, Fatal>;
    /// Sends `data` to the kTLS socket, keeping the TLS record open for what
    /// follows when `more` is set (`MSG_MORE`).
    fn write_kernel(&mut self, data: &[u8], more: bool) -> Result<Io, Fatal>;
    /// Sends `len` bytes of the file run at the chain's head with
    /// `SSL_sendfile()`, or posts that to a thread ([`Io::Offloaded`]).
    fn sendfile(&mut self, chain: &C, len: usize) -> Result<Io, Fatal>;
}

/// The connection's TLS buffer (`c->ssl->buf`): bytes `pos..last` of `mem`
/// are waiting to be written.
pub struct SendBuf<'a> {
    pub mem: &'a mut [u8],
    pub pos: usize,
    pub last: usize,
    /// Set when the buffered bytes must go out without waiting for more
    /// (`buf->flush`).
    pub flush: bool,
}

impl SendBuf<'_> {
    fn pending(&self) -> usize {
        self.last - self.pos
    }

    fn free(&self) -> usize {
        self.mem.len() - self.last
    }
}

/// Largest amount one call sends: nginx's bound, the largest `int32_t`
/// minus a page, so that counts fit the `int` OpenSSL returns.
pub fn effective_limit(limit: i64, pagesize: u64) -> u64 {
    let max = i32::MAX as u64 - pagesize;
    if limit <= 0 || limit as u64 > max {
        max
    } else {
        limit as u64
    }
}

/// Sends as much of `chain` as the connection takes, within `limit` bytes
/// (already passed through [`effective_limit`]); with kTLS, runs of at least
/// `sendfile_min` bytes of file data go out with `SSL_sendfile()`.  Returns
/// whether bytes are left in the buffer (`NGX_SSL_BUFFERED`).
pub fn send_chain<C: Chain, T: Transport<C>>(
    chain: &mut C,
    buf: &mut SendBuf<'_>,
    io: &mut T,
    limit: u64,
    sendfile_min: u64,
) -> Result<bool, Fatal> {
    if io.busy()? {
        return Ok(buf.pending() > 0);
    }

    let mut send = buf.pending() as u64;

    // A thread's sendfile went out before anything that follows now.
    match io.collect(chain)? {
        Collected::Nothing => {}
        Collected::Sent(n) => {
            chain.consume(n);
            send += n;
        }
        Collected::Again => return Ok(buf.pending() > 0),
    }

    let mut flush = chain.head().is_none() || buf.flush;

    loop {
        // Asked once a round: a write through OpenSSL can finish the
        // handshake and so allow it; nothing in here takes it back.
        let kernel = io.kernel_allowed();
        let mut sendfile_next = false;
        let mut reads = Read::Done;

        while buf.free() > 0 && send < limit {
            let Some(head) = chain.head() else { break };

            if head.flush {
                flush = true;
            }

            let room = buf.free().min((limit - send) as usize);
            let size = room.min(usize::try_from(head.size).unwrap_or(usize::MAX));
            let last = buf.last;

            match head.kind {
                Kind::Special => {
                    chain.skip();
                    continue;
                }
                Kind::File { .. } if kernel && chain.file_run(sendfile_min) >= sendfile_min => {
                    flush = true;
                    sendfile_next = true;
                    break;
                }
                Kind::Memory | Kind::File { in_memory: true } => {
                    chain.copy_memory(&mut buf.mem[last..last + size]);
                }
                // Without kTLS now, or a run too short for a sendfile of
                // its own: read into the buffer.
                Kind::File { in_memory: false } => {
                    reads = chain.read_file(buf.mem, last, size)?;
                    if reads == Read::Offloaded {
                        break;
                    }
                }
            }

            buf.last += size;
            send += size as u64;
        }

        if reads == Read::Done {
            reads = chain.finish_reads(buf.mem)?;
        }
        if reads == Read::Offloaded {
            // The buffer is written once the thread has filled it.
            buf.flush = flush;
            return Ok(true);
        }

        if !flush && send < limit && buf.free() > 0 {
            break;
        }

        let size = buf.pending();

        if size == 0 {
            if sendfile_next && send < limit {
                let run = chain.file_run(limit - send);
                let run = usize::try_from(run).unwrap_or(usize::MAX);

                match io.sendfile(chain, run)? {
                    Io::Sent(n) => {
                        chain.consume(n as u64);
                        send += n as u64;
                        flush = false;
                        continue;
                    }
                    Io::Again | Io::Offloaded => break,
                }
            }

            buf.flush = false;
            return Ok(false);
        }

        let data = &buf.mem[buf.pos..buf.last];
        let written = if kernel {
            io.write_kernel(data, sendfile_next && send < limit)?
        } else {
            io.write(data)?
        };
        let n = match written {
            Io::Sent(n) => n,
            Io::Again | Io::Offloaded => break,
        };

        buf.pos += n;

        if n < size {
            break;
        }

        flush = false;
        buf.pos = 0;
        buf.last = 0;

        if chain.head().is_none() || send >= limit {
            break;
        }
    }

    buf.flush = flush;
    Ok(buf.pos < buf.last)
}

#[cfg(test)]
mod tests;
