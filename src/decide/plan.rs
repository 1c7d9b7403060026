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
//! - Where splice keeps kTLS records open (Linux 6.5 and later), those short
//!   runs go through the connection's pipe instead: file pages are spliced
//!   into it, the memory bytes between them are written into it, and the
//!   pipe is spliced to the kTLS socket.  Records stay as full as with the
//!   buffer, and file data never passes through userspace.  The pipe then
//!   holds bytes already taken from the chain, like the buffer: its bytes
//!   go out before the buffer's.
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
    #[cfg_attr(
        not(ngx_feature = "threads"),
        expect(dead_code, reason = "only a thread of nginx's pool offloads")
    )]
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

/// Outcome of moving file bytes into the connection's pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piped {
    /// That many bytes are in the pipe now (at least one).
    Moved(usize),
    /// The pipe is full: it must be drained first.
    Full,
    /// The file cannot be spliced: its bytes are read into the buffer.
    Refused,
}

/// What a thread's sendfile left to count, from [`Transport::collect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collected {
    /// No sendfile result is waiting.
    Nothing,
    /// That many bytes of the chain's head went out.
    #[cfg_attr(
        not(ngx_feature = "threads"),
        expect(dead_code, reason = "only a thread of nginx's pool sends")
    )]
    Sent(u64),
    /// The socket was full: wait until it is writable.
    #[cfg_attr(
        not(ngx_feature = "threads"),
        expect(dead_code, reason = "only a thread of nginx's pool sends")
    )]
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
    /// Whether up to `len` bytes of the file at the chain's head may go
    /// through the connection's pipe now: splice keeps kTLS records open on
    /// this kernel, the connection has a pipe (or gets one from the
    /// worker's), and reading the file cannot wait for the disk where a
    /// thread should do that.  Asked only while the kernel is allowed.
    fn pipe_ready(&mut self, chain: &C, len: usize) -> bool;
    /// Bytes waiting in the connection's pipe.
    fn piped(&self) -> usize;
    /// Writes memory bytes into the pipe; [`Io::Again`] when it is full.
    fn pipe_memory(&mut self, data: &[u8]) -> Result<Io, Fatal>;
    /// Splices up to `len` bytes of the file run at the chain's head into
    /// the pipe.  A file that ends early is fatal (logged).
    fn pipe_file(&mut self, chain: &C, len: usize) -> Result<Piped, Fatal>;
    /// Splices the pipe's bytes to the kTLS socket, keeping the TLS record
    /// open for what follows when `more` is set (`SPLICE_F_MORE`).
    fn drain_pipe(&mut self, more: bool) -> Result<Io, Fatal>;
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

/// How much of a buffer of `size` bytes goes into the TLS buffer now.
fn room_for(buf: &SendBuf<'_>, size: u64, left: u64) -> usize {
    let room = buf.free().min(usize::try_from(left).unwrap_or(usize::MAX));
    room.min(usize::try_from(size).unwrap_or(usize::MAX))
}

/// Whether the connection holds bytes taken from the chain and not sent yet.
fn buffered<C: Chain, T: Transport<C>>(buf: &SendBuf<'_>, io: &T) -> bool {
    buf.pending() > 0 || io.piped() > 0
}

/// Moves the buffer's bytes into the pipe, behind what it holds; returns
/// whether they all fit.
fn buffer_to_pipe<C: Chain, T: Transport<C>>(
    buf: &mut SendBuf<'_>,
    io: &mut T,
) -> Result<bool, Fatal> {
    if buf.pending() == 0 {
        return Ok(true);
    }
    if let Io::Sent(n) = io.pipe_memory(&buf.mem[buf.pos..buf.last])? {
        buf.pos += n;
    }
    if buf.pending() > 0 {
        return Ok(false);
    }
    buf.pos = 0;
    buf.last = 0;
    Ok(true)
}

/// What became of a file run offered to the pipe.
enum Step {
    /// That many bytes of the chain went into the pipe.
    Moved(u64),
    /// The pipe is full: drain it, then go on.
    Full,
    /// Reads waiting before the run went to a thread.
    Offloaded,
    /// The run is read into the buffer instead.
    Read,
}

/// Puts the file run at the chain's head (at most `left` bytes) into the
/// pipe, behind the bytes buffered before it, if the transport allows.
fn pipe_file_run<C: Chain, T: Transport<C>>(
    chain: &mut C,
    buf: &mut SendBuf<'_>,
    io: &mut T,
    left: u64,
) -> Result<Step, Fatal> {
    let run = usize::try_from(chain.file_run(left)).unwrap_or(usize::MAX);
    if run == 0 || !io.pipe_ready(chain, run) {
        return Ok(Step::Read);
    }
    // The bytes before the file's must be in the buffer, then in the pipe.
    if chain.finish_reads(buf.mem)? == Read::Offloaded {
        return Ok(Step::Offloaded);
    }
    if !buffer_to_pipe(buf, io)? {
        return Ok(Step::Full);
    }
    match io.pipe_file(chain, run)? {
        Piped::Moved(n) => {
            chain.consume(n as u64);
            Ok(Step::Moved(n as u64))
        }
        Piped::Full => Ok(Step::Full),
        Piped::Refused => Ok(Step::Read),
    }
}

/// What one call has sent, and what it may still send.
struct Call {
    /// Bytes counted against `limit`: those buffered or piped when the call
    /// began, and those taken from the chain since.
    send: u64,
    limit: u64,
    /// The shortest file run worth a sendfile of its own.
    sendfile_min: u64,
    /// The bytes taken must go out now, without waiting for more.
    flush: bool,
}

impl Call {
    fn left(&self) -> u64 {
        self.limit - self.send
    }

    fn under_limit(&self) -> bool {
        self.send < self.limit
    }

    /// After everything taken went out: another round, unless the chain is
    /// sent or the limit reached.
    fn next_round<C: Chain>(&self, chain: &C) -> Then {
        if chain.head().is_none() || !self.under_limit() {
            Then::Stop
        } else {
            Then::Next
        }
    }
}

/// What one round of filling the buffer found.
struct Round {
    /// The kernel may be written to directly in this round.
    kernel: bool,
    /// The chain's head is a file run that goes out with a sendfile of its
    /// own, once the buffer and the pipe are empty.  It is found only under
    /// the limit, and nothing in the round adds to what the call sent, so
    /// the file data follows in this call and the kernel keeps the TLS
    /// record open for it.
    sendfile_next: bool,
    /// The pipe took less than it was offered.
    pipe_full: bool,
}

/// What [`send_chain`] does after a step.
enum Then {
    /// Another round: fill the buffer again and send it.
    Next,
    /// Stop for now; what is left buffered waits for the next call.
    Stop,
    /// A thread reads into the buffer: it is written once the thread is done.
    Offloaded,
    /// Everything taken from the chain went out.
    Sent,
}

/// Sends as much of `chain` as the connection takes, within `limit` bytes
/// (already passed through [`effective_limit`]); with kTLS, runs of at least
/// `sendfile_min` bytes of file data go out with `SSL_sendfile()`, and
/// shorter ones through the connection's pipe where the transport allows.
/// Returns whether bytes are left in the buffer or the pipe
/// (`NGX_SSL_BUFFERED`).
pub fn send_chain<C: Chain, T: Transport<C>>(
    chain: &mut C,
    buf: &mut SendBuf<'_>,
    io: &mut T,
    limit: u64,
    sendfile_min: u64,
) -> Result<bool, Fatal> {
    if io.busy()? {
        return Ok(buffered(buf, io));
    }

    let mut send = (buf.pending() + io.piped()) as u64;

    // A thread's sendfile went out before anything that follows now.
    match io.collect(chain)? {
        Collected::Nothing => {}
        Collected::Sent(n) => {
            chain.consume(n);
            send += n;
            // The flush that held for the file run is spent, as after a
            // sendfile in the event loop.
            buf.flush = false;
        }
        Collected::Again => return Ok(buffered(buf, io)),
    }

    let mut call = Call {
        send,
        limit,
        // An empty run is not worth a sendfile, whatever the minimum.
        sendfile_min: sendfile_min.max(1),
        flush: chain.head().is_none() || buf.flush,
    };

    let then = loop {
        match send_round(chain, buf, io, &mut call)? {
            Then::Next => {}
            then => break then,
        }
    };

    match then {
        Then::Sent => {
            buf.flush = false;
            Ok(false)
        }
        Then::Offloaded => {
            buf.flush = call.flush;
            Ok(true)
        }
        Then::Next | Then::Stop => {
            buf.flush = call.flush;
            Ok(buffered(buf, io))
        }
    }
}

/// One round: fills the buffer from the chain, then sends the pipe, the
/// buffer or the file run at the head, whichever comes first.
fn send_round<C: Chain, T: Transport<C>>(
    chain: &mut C,
    buf: &mut SendBuf<'_>,
    io: &mut T,
    call: &mut Call,
) -> Result<Then, Fatal> {
    let mut round = Round {
        // Asked once a round: a write through OpenSSL can finish the
        // handshake and so allow it; nothing in a round takes it back.
        kernel: io.kernel_allowed(),
        sendfile_next: false,
        pipe_full: false,
    };

    let mut reads = fill_buffer(chain, buf, io, call, &mut round)?;
    if reads == Read::Done {
        reads = chain.finish_reads(buf.mem)?;
    }
    if reads == Read::Offloaded {
        return Ok(Then::Offloaded);
    }

    // Nothing asks for the bytes to go out yet: wait for more.
    if !call.flush && !round.pipe_full && call.under_limit() && buf.free() > 0 {
        return Ok(Then::Stop);
    }

    if io.piped() > 0 {
        send_pipe(chain, buf, io, call, &mut round)
    } else if buf.pending() > 0 {
        write_buffer(chain, buf, io, call, &round)
    } else {
        send_file_run(chain, io, call, &round)
    }
}

/// Takes bytes from the chain into the buffer, or into the pipe, until the
/// buffer is full, the limit is reached, or the head is a file run for a
/// sendfile of its own.  Returns [`Read::Offloaded`] when a thread reads
/// into the buffer.
fn fill_buffer<C: Chain, T: Transport<C>>(
    chain: &mut C,
    buf: &mut SendBuf<'_>,
    io: &mut T,
    call: &mut Call,
    round: &mut Round,
) -> Result<Read, Fatal> {
    while buf.free() > 0 && call.under_limit() {
        let Some(head) = chain.head() else { break };

        if head.flush {
            call.flush = true;
        }

        match head.kind {
            Kind::Special => chain.skip(),
            Kind::File { .. }
                if round.kernel && chain.file_run(call.sendfile_min) >= call.sendfile_min =>
            {
                call.flush = true;
                round.sendfile_next = true;
                break;
            }
            Kind::Memory | Kind::File { in_memory: true } => {
                copy_into_buffer(chain, buf, call, head.size);
            }
            Kind::File { in_memory: false } => {
                if round.kernel {
                    match pipe_file_run(chain, buf, io, call.left())? {
                        Step::Moved(n) => {
                            call.send += n;
                            continue;
                        }
                        Step::Full => {
                            round.pipe_full = true;
                            break;
                        }
                        Step::Offloaded => return Ok(Read::Offloaded),
                        Step::Read => {}
                    }
                }
                if read_into_buffer(chain, buf, call, head.size)? == Read::Offloaded {
                    return Ok(Read::Offloaded);
                }
            }
        }
    }
    Ok(Read::Done)
}

/// Copies the head's memory bytes into the buffer, as many as fit.
fn copy_into_buffer<C: Chain>(chain: &mut C, buf: &mut SendBuf<'_>, call: &mut Call, size: u64) {
    let size = room_for(buf, size, call.left());
    let last = buf.last;
    chain.copy_memory(&mut buf.mem[last..last + size]);
    buf.last += size;
    call.send += size as u64;
}

/// Reads the head's file bytes into the buffer, as many as fit: without
/// kTLS now, or for a run too short for a sendfile of its own and no pipe.
/// The buffer may just have gone into the pipe, so its room is measured
/// here.
fn read_into_buffer<C: Chain>(
    chain: &mut C,
    buf: &mut SendBuf<'_>,
    call: &mut Call,
    size: u64,
) -> Result<Read, Fatal> {
    let size = room_for(buf, size, call.left());
    let reads = chain.read_file(buf.mem, buf.last, size)?;
    if reads == Read::Done {
        buf.last += size;
        call.send += size as u64;
    }
    Ok(reads)
}

/// Splices the pipe to the kTLS socket.  The pipe's bytes go first; the
/// buffer's follow through the pipe, or through OpenSSL when the kernel may
/// not be written to now.
fn send_pipe<C: Chain, T: Transport<C>>(
    chain: &C,
    buf: &mut SendBuf<'_>,
    io: &mut T,
    call: &mut Call,
    round: &mut Round,
) -> Result<Then, Fatal> {
    if round.kernel && !buffer_to_pipe(buf, io)? {
        round.pipe_full = true;
    }
    let piped = io.piped();
    let more = round.kernel && (buf.pending() > 0 || round.pipe_full || round.sendfile_next);
    match io.drain_pipe(more)? {
        Io::Sent(n) if n == piped => {}
        Io::Sent(_) | Io::Again | Io::Offloaded => return Ok(Then::Stop),
    }
    if buf.pending() > 0 || round.pipe_full {
        return Ok(Then::Next);
    }
    call.flush = false;
    Ok(call.next_round(chain))
}

/// Writes the buffer: to the kTLS socket, with the record kept open when
/// file data follows, or through OpenSSL.
fn write_buffer<C: Chain, T: Transport<C>>(
    chain: &C,
    buf: &mut SendBuf<'_>,
    io: &mut T,
    call: &mut Call,
    round: &Round,
) -> Result<Then, Fatal> {
    let size = buf.pending();
    let data = &buf.mem[buf.pos..buf.last];
    let written = if round.kernel {
        io.write_kernel(data, round.sendfile_next)?
    } else {
        io.write(data)?
    };
    let n = match written {
        Io::Sent(n) => n,
        Io::Again | Io::Offloaded => return Ok(Then::Stop),
    };

    buf.pos += n;
    if n < size {
        return Ok(Then::Stop);
    }

    call.flush = false;
    buf.pos = 0;
    buf.last = 0;
    Ok(call.next_round(chain))
}

/// With the buffer and the pipe empty, sends the file run at the head with
/// a sendfile of its own (neighbouring file buffers coalesced), if one is
/// next.
fn send_file_run<C: Chain, T: Transport<C>>(
    chain: &mut C,
    io: &mut T,
    call: &mut Call,
    round: &Round,
) -> Result<Then, Fatal> {
    if !round.sendfile_next {
        return Ok(Then::Sent);
    }
    let run = usize::try_from(chain.file_run(call.left())).unwrap_or(usize::MAX);
    match io.sendfile(chain, run)? {
        Io::Sent(n) => {
            chain.consume(n as u64);
            call.send += n as u64;
            call.flush = false;
            Ok(Then::Next)
        }
        Io::Again | Io::Offloaded => Ok(Then::Stop),
    }
}

#[cfg(test)]
mod tests;
