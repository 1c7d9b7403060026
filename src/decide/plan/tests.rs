//! Drives [`send_chain`] with a chain of in-memory "files" and a transport
//! that records what went out and how.

use super::*;
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Clone, Debug)]
enum Data {
    Special,
    Memory(Vec<u8>),
    /// A file buffer: file id, bytes, start offset in the file.
    File(u8, Vec<u8>, u64),
}

#[derive(Clone, Debug)]
struct FakeBuf {
    data: Data,
    flush: bool,
    pos: usize,
}

/// Reads waiting for `finish_reads`: file id, file offset, and the
/// (buffer offset, bytes) parts.
type Queued = (u8, u64, Vec<(usize, Vec<u8>)>);

/// A job in the fake thread pool.
#[derive(Clone, Debug)]
enum Job {
    /// A sendfile of that many bytes from the chain's head.
    Sendfile(usize),
    /// Reads into the buffer.
    Reads(Vec<Queued>),
}

/// nginx's thread pool as the plan sees it: one task per connection,
/// shared by the chain (reads) and the transport (sendfile).
#[derive(Default)]
struct Pool {
    /// Whether file I/O goes to the pool (`aio threads`).
    on: bool,
    /// The job posted and not finished yet.
    running: Option<Job>,
    /// A finished sendfile's result, not collected yet.
    finished: Option<Collected>,
    posted: usize,
}

type Threads = Rc<RefCell<Pool>>;

struct FakeChain {
    bufs: Vec<FakeBuf>,
    /// A file that shrank under us: reads of it fail.
    truncated: Option<u8>,
    reads: Vec<Queued>,
    /// System calls the reads took.
    read_calls: usize,
    threads: Threads,
}

fn mem(bytes: &[u8]) -> FakeBuf {
    FakeBuf {
        data: Data::Memory(bytes.to_vec()),
        flush: false,
        pos: 0,
    }
}

fn file(id: u8, bytes: &[u8], offset: u64) -> FakeBuf {
    FakeBuf {
        data: Data::File(id, bytes.to_vec(), offset),
        flush: false,
        pos: 0,
    }
}

fn special(flush: bool) -> FakeBuf {
    FakeBuf {
        data: Data::Special,
        flush,
        pos: 0,
    }
}

fn flushed(mut b: FakeBuf) -> FakeBuf {
    b.flush = true;
    b
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

impl FakeBuf {
    fn rest(&self) -> &[u8] {
        match &self.data {
            Data::Special => &[],
            Data::Memory(b) | Data::File(_, b, _) => &b[self.pos..],
        }
    }
}

impl FakeChain {
    fn new(bufs: Vec<FakeBuf>) -> Self {
        FakeChain {
            bufs,
            truncated: None,
            reads: vec![],
            read_calls: 0,
            threads: Threads::default(),
        }
    }

    /// Copies the parts of `reads` into `mem`, as the reads do.
    fn perform(&mut self, reads: Vec<Queued>, mem: &mut [u8]) -> Result<(), Fatal> {
        for (id, _, parts) in reads {
            if self.truncated == Some(id) {
                return Err(Fatal);
            }
            self.read_calls += 1;
            for (at, data) in parts {
                mem[at..at + data.len()].copy_from_slice(&data);
            }
        }
        Ok(())
    }

    fn pop_if_done(&mut self) {
        if let Some(b) = self.bufs.first() {
            if !matches!(b.data, Data::Special) && b.rest().is_empty() {
                self.bufs.remove(0);
            }
        }
    }
}

impl Chain for FakeChain {
    fn head(&self) -> Option<Head> {
        let b = self.bufs.first()?;
        let kind = match b.data {
            Data::Special => Kind::Special,
            Data::Memory(_) => Kind::Memory,
            Data::File(..) => Kind::File { in_memory: false },
        };
        Some(Head {
            kind,
            size: b.rest().len() as u64,
            flush: b.flush,
        })
    }

    fn skip(&mut self) {
        self.bufs.remove(0);
    }

    fn copy_memory(&mut self, dst: &mut [u8]) {
        let b = &mut self.bufs[0];
        assert!(
            matches!(b.data, Data::Memory(_)),
            "copy from a non-memory buffer"
        );
        dst.copy_from_slice(&b.rest()[..dst.len()]);
        b.pos += dst.len();
        self.pop_if_done();
    }

    fn read_file(&mut self, mem: &mut [u8], at: usize, len: usize) -> Result<Read, Fatal> {
        let Data::File(id, _, _) = self.bufs[0].data else {
            panic!("read from a non-file buffer")
        };
        // A batch of reads is one file.
        if self.reads.last().is_some_and(|r| r.0 != id)
            && self.finish_reads(mem)? == Read::Offloaded
        {
            return Ok(Read::Offloaded);
        }
        let b = &mut self.bufs[0];
        let Data::File(_, ref bytes, offset) = b.data else {
            unreachable!()
        };
        let start = offset + b.pos as u64;
        let data = bytes[b.pos..b.pos + len].to_vec();
        b.pos += len;
        if len == 0 {
            // As in chain.rs: nothing to read is no read.
            self.pop_if_done();
            return Ok(Read::Done);
        }
        // Neighbouring parts of one file join the read before them.
        match self.reads.last_mut() {
            Some(r) if r.1 + r.2.iter().map(|p| p.1.len() as u64).sum::<u64>() == start => {
                r.2.push((at, data))
            }
            _ => self.reads.push((id, start, vec![(at, data)])),
        }
        self.pop_if_done();
        Ok(Read::Done)
    }

    fn finish_reads(&mut self, mem: &mut [u8]) -> Result<Read, Fatal> {
        let reads: Vec<Queued> = self.reads.drain(..).collect();
        if reads.is_empty() {
            return Ok(Read::Done);
        }
        let mut pool = self.threads.borrow_mut();
        if pool.on {
            assert!(pool.running.is_none(), "a second task while one runs");
            pool.running = Some(Job::Reads(reads));
            pool.posted += 1;
            return Ok(Read::Offloaded);
        }
        drop(pool);
        self.perform(reads, mem)?;
        Ok(Read::Done)
    }

    fn file_run(&self, max: u64) -> u64 {
        let mut total = 0;
        let mut expect: Option<(u8, u64)> = None;
        for b in &self.bufs {
            let Data::File(id, bytes, offset) = &b.data else {
                break;
            };
            let start = offset + b.pos as u64;
            if let Some(e) = expect {
                if e != (*id, start) {
                    break;
                }
            }
            total += (bytes.len() - b.pos) as u64;
            if total >= max {
                return max;
            }
            expect = Some((*id, offset + bytes.len() as u64));
        }
        total
    }

    fn consume(&mut self, mut n: u64) {
        while n > 0 {
            let b = &mut self.bufs[0];
            let take = (b.rest().len() as u64).min(n);
            b.pos += take as usize;
            n -= take;
            self.pop_if_done();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Op {
    /// Through OpenSSL.
    Write(usize),
    /// To the kTLS socket; `true` with MSG_MORE.
    Kernel(usize, bool),
    Sendfile(usize),
    /// Memory bytes into the pipe.
    PipeMemory(usize),
    /// File bytes spliced into the pipe.
    PipeFile(usize),
    /// The pipe spliced to the kTLS socket; `true` with SPLICE_F_MORE.
    Drain(usize, bool),
}

/// The connection's pipe, where splice keeps records open.
#[derive(Default)]
struct FakePipe {
    /// How many bytes it holds at most.
    capacity: usize,
    bytes: Vec<u8>,
    /// Splicing from files is refused (a file system without it).
    refuses: bool,
    /// A refusal was seen: the connection reads files from then on.
    refused: bool,
    /// With `aio threads`, the page cache lacks the files: no splicing.
    uncached: bool,
}

/// Largest TLS record payload.
const RECORD: usize = 16384;

struct FakeTls {
    kernel: bool,
    /// An SSL_write() that returned "again" must be retried before anything
    /// goes around OpenSSL.
    ssl_pending: bool,
    /// How many bytes the socket still takes before it says "again".
    room: usize,
    /// At most this many bytes per call (short writes).
    per_call: usize,
    out: Vec<u8>,
    ops: Vec<Op>,
    /// The next write of any kind fails.
    fail: bool,
    /// A write failed: the connection is closed, nothing more may go out.
    failed: bool,
    /// TLS records completed, and bytes in the record the kernel holds open.
    records: usize,
    open: usize,
    threads: Threads,
    pipe: Option<FakePipe>,
}

impl FakeTls {
    fn new(kernel: bool) -> Self {
        FakeTls {
            kernel,
            ssl_pending: false,
            room: usize::MAX,
            per_call: usize::MAX,
            out: vec![],
            ops: vec![],
            fail: false,
            failed: false,
            records: 0,
            open: 0,
            threads: Threads::default(),
            pipe: None,
        }
    }

    /// The kernel's side of a sendfile of `len` bytes of the chain's head.
    fn send_file_bytes(&mut self, chain: &FakeChain, len: usize) -> Io {
        let n = self.accept(len);
        if n == 0 {
            return Io::Again;
        }
        self.ops.push(Op::Sendfile(n));
        let mut left = n;
        for b in &chain.bufs {
            let rest = b.rest();
            let take = rest.len().min(left);
            self.out.extend_from_slice(&rest[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        self.room -= n;
        self.kernel_records(n, true);
        Io::Sent(n)
    }

    /// The start of every write: none after a failure, and this one fails
    /// when the test says so.
    fn io(&mut self) -> Result<(), Fatal> {
        assert!(!self.failed, "written to after a failure");
        if self.fail {
            self.failed = true;
            return Err(Fatal);
        }
        Ok(())
    }

    fn accept(&mut self, len: usize) -> usize {
        len.min(self.room).min(self.per_call)
    }

    /// The kernel's record layer: records fill up to 16k; a write without
    /// MSG_MORE and the end of a sendfile() close the open one.
    fn kernel_records(&mut self, n: usize, close: bool) {
        let total = self.open + n;
        self.records += total / RECORD;
        self.open = total % RECORD;
        if close && self.open > 0 {
            self.records += 1;
            self.open = 0;
        }
    }
}

impl Transport<FakeChain> for FakeTls {
    fn busy(&mut self) -> Result<bool, Fatal> {
        Ok(self.threads.borrow().running.is_some())
    }

    fn collect(&mut self, _chain: &FakeChain) -> Result<Collected, Fatal> {
        Ok(self
            .threads
            .borrow_mut()
            .finished
            .take()
            .unwrap_or(Collected::Nothing))
    }

    fn kernel_allowed(&mut self) -> bool {
        self.kernel && !self.ssl_pending
    }

    fn write(&mut self, data: &[u8]) -> Result<Io, Fatal> {
        assert!(!data.is_empty(), "empty SSL_write");
        assert_eq!(self.open, 0, "SSL_write inside an open kernel record");
        assert_eq!(self.piped(), 0, "SSL_write before the pipe's bytes");
        self.io()?;
        let n = self.accept(data.len());
        if n == 0 {
            self.ssl_pending = true;
            return Ok(Io::Again);
        }
        self.ssl_pending = false;
        self.ops.push(Op::Write(n));
        self.out.extend_from_slice(&data[..n]);
        self.room -= n;
        self.records += n.div_ceil(RECORD);
        Ok(Io::Sent(n))
    }

    fn write_kernel(&mut self, data: &[u8], more: bool) -> Result<Io, Fatal> {
        assert!(
            self.kernel && !self.ssl_pending,
            "kernel write while OpenSSL has pending bytes"
        );
        assert_eq!(self.piped(), 0, "send before the pipe's bytes");
        assert!(!data.is_empty(), "empty send");
        self.io()?;
        let n = self.accept(data.len());
        if n == 0 {
            return Ok(Io::Again);
        }
        self.ops.push(Op::Kernel(n, more));
        self.out.extend_from_slice(&data[..n]);
        self.room -= n;
        self.kernel_records(n, !more);
        Ok(Io::Sent(n))
    }

    fn sendfile(&mut self, chain: &FakeChain, len: usize) -> Result<Io, Fatal> {
        assert!(
            self.kernel && !self.ssl_pending,
            "sendfile while OpenSSL has pending bytes"
        );
        assert!(len > 0, "empty SSL_sendfile");
        assert_eq!(self.piped(), 0, "sendfile before the pipe's bytes");
        assert_eq!(
            len as u64,
            chain.file_run(len as u64),
            "sendfile beyond the file run"
        );
        self.io()?;
        let mut pool = self.threads.borrow_mut();
        if pool.on {
            assert!(pool.running.is_none(), "a second task while one runs");
            assert!(pool.finished.is_none(), "a result left uncollected");
            pool.running = Some(Job::Sendfile(len));
            pool.posted += 1;
            return Ok(Io::Offloaded);
        }
        drop(pool);
        Ok(self.send_file_bytes(chain, len))
    }

    fn pipe_ready(&mut self, chain: &FakeChain, len: usize) -> bool {
        assert!(self.kernel && !self.ssl_pending, "pipe asked without kTLS");
        assert_eq!(
            len as u64,
            chain.file_run(len as u64),
            "beyond the file run"
        );
        let offloads = self.threads.borrow().on;
        self.pipe
            .as_ref()
            .is_some_and(|p| !(p.refused || offloads && p.uncached))
    }

    fn piped(&self) -> usize {
        self.pipe.as_ref().map_or(0, |p| p.bytes.len())
    }

    fn pipe_memory(&mut self, data: &[u8]) -> Result<Io, Fatal> {
        assert!(!data.is_empty(), "empty pipe write");
        assert!(
            !self.ssl_pending,
            "pipe write while OpenSSL has pending bytes"
        );
        self.io()?;
        let pipe = self.pipe.as_mut().expect("no pipe");
        let n = data.len().min(pipe.capacity - pipe.bytes.len());
        if n == 0 {
            return Ok(Io::Again);
        }
        pipe.bytes.extend_from_slice(&data[..n]);
        self.ops.push(Op::PipeMemory(n));
        Ok(Io::Sent(n))
    }

    fn pipe_file(&mut self, chain: &FakeChain, len: usize) -> Result<Piped, Fatal> {
        assert!(len > 0, "empty splice");
        assert_eq!(
            len as u64,
            chain.file_run(len as u64),
            "beyond the file run"
        );
        let Data::File(id, ..) = chain.bufs[0].data else {
            panic!("splice from a non-file buffer")
        };
        if chain.truncated == Some(id) {
            return Err(Fatal);
        }
        self.io()?;
        let pipe = self.pipe.as_mut().expect("no pipe");
        assert!(!pipe.refused, "splice after a refusal");
        if pipe.refuses {
            pipe.refused = true;
            return Ok(Piped::Refused);
        }
        let n = len.min(pipe.capacity - pipe.bytes.len());
        if n == 0 {
            return Ok(Piped::Full);
        }
        let mut left = n;
        for b in &chain.bufs {
            let take = b.rest().len().min(left);
            pipe.bytes.extend_from_slice(&b.rest()[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        self.ops.push(Op::PipeFile(n));
        Ok(Piped::Moved(n))
    }

    fn drain_pipe(&mut self, more: bool) -> Result<Io, Fatal> {
        assert!(!self.ssl_pending, "splice while OpenSSL has pending bytes");
        let pending = self.piped();
        assert!(pending > 0, "drain of an empty pipe");
        self.io()?;
        let n = self.accept(pending);
        if n == 0 {
            return Ok(Io::Again);
        }
        let pipe = self.pipe.as_mut().expect("no pipe");
        self.out.extend(pipe.bytes.drain(..n));
        self.room -= n;
        self.ops.push(Op::Drain(n, more));
        self.kernel_records(n, !more && n == pending);
        Ok(Io::Sent(n))
    }
}

const LIMIT: u64 = i32::MAX as u64 - 4096;
/// The default of `ktls_sendfile_min_size`.
const MIN: u64 = 16384;

struct Run {
    chain: FakeChain,
    tls: FakeTls,
    mem: Vec<u8>,
    pos: usize,
    last: usize,
    flush: bool,
    sendfile_min: u64,
}

impl Run {
    fn new(bufs: Vec<FakeBuf>, kernel: bool, bufsize: usize) -> Self {
        Run {
            chain: FakeChain::new(bufs),
            tls: FakeTls::new(kernel),
            mem: vec![0; bufsize],
            pos: 0,
            last: 0,
            flush: false,
            sendfile_min: MIN,
        }
    }

    /// Calls until everything is sent, the socket taking `room` bytes
    /// between calls (as if the peer read that much each time).
    fn run_to_end(&mut self, room: usize) {
        let bytes: usize = self.chain.bufs.iter().map(|b| b.rest().len()).sum();
        for _ in 0..=2 * bytes + 2 {
            self.tls.room = room;
            let buffered = self.call(LIMIT).unwrap();
            // A thread's job is done before the next call.
            if self.finish_task().unwrap() {
                continue;
            }
            if self.chain.bufs.is_empty() && !buffered {
                return;
            }
        }
        panic!("no progress");
    }

    /// Sends file I/O to a thread pool, shared by the chain and the transport.
    fn with_threads(mut self) -> Self {
        let pool = Threads::default();
        pool.borrow_mut().on = true;
        self.chain.threads = pool.clone();
        self.tls.threads = pool;
        self
    }

    /// The thread does the posted job, if there is one; false if none.
    fn finish_task(&mut self) -> Result<bool, Fatal> {
        let job = self.tls.threads.borrow_mut().running.take();
        match job {
            None => Ok(false),
            Some(Job::Reads(reads)) => {
                self.chain.perform(reads, &mut self.mem)?;
                Ok(true)
            }
            Some(Job::Sendfile(len)) => {
                let done = match self.tls.send_file_bytes(&self.chain, len) {
                    Io::Sent(n) => Collected::Sent(n as u64),
                    _ => Collected::Again,
                };
                self.tls.threads.borrow_mut().finished = Some(done);
                Ok(true)
            }
        }
    }

    fn call(&mut self, limit: u64) -> Result<bool, Fatal> {
        let mut buf = SendBuf {
            mem: &mut self.mem,
            pos: self.pos,
            last: self.last,
            flush: self.flush,
        };
        let r = send_chain(
            &mut self.chain,
            &mut buf,
            &mut self.tls,
            limit,
            self.sendfile_min,
        );
        (self.pos, self.last, self.flush) = (buf.pos, buf.last, buf.flush);
        r
    }
}

fn concat(bufs: &[FakeBuf]) -> Vec<u8> {
    bufs.iter().flat_map(|b| b.rest().to_vec()).collect()
}

#[test]
fn limit_follows_nginx() {
    assert_eq!(effective_limit(0, 4096), LIMIT);
    assert_eq!(effective_limit(-1, 4096), LIMIT);
    assert_eq!(effective_limit(1 << 40, 4096), LIMIT);
    assert_eq!(effective_limit(8192, 4096), 8192);
}

#[test]
fn memory_without_flush_stays_buffered() {
    let mut run = Run::new(vec![mem(b"hello")], false, 16384);
    assert_eq!(run.call(LIMIT), Ok(true));
    assert!(run.tls.ops.is_empty(), "nothing is written before a flush");
    assert_eq!(&run.mem[run.pos..run.last], b"hello");

    // An empty chain flushes what is buffered.
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, b"hello");
    assert_eq!(run.tls.ops, vec![Op::Write(5)]);
}

#[test]
fn memory_buffers_are_coalesced_into_one_record() {
    let bufs = vec![
        mem(b"HTTP/1.1 200 OK\r\n\r\n"),
        mem(&pattern(1000, 1)),
        flushed(special(true)),
    ];
    let want = concat(&bufs);
    let mut run = Run::new(bufs, false, 16384);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, want);
    assert_eq!(run.tls.ops, vec![Op::Write(want.len())]);
    assert!(run.chain.bufs.is_empty());
}

#[test]
fn full_buffer_is_written_without_flush() {
    let data = pattern(40000, 2);
    let mut run = Run::new(vec![mem(&data)], false, 16384);
    assert_eq!(run.call(LIMIT), Ok(true));
    // Two full buffers go out; the tail waits for a flush.
    assert_eq!(run.tls.ops, vec![Op::Write(16384), Op::Write(16384)]);
    assert_eq!(run.last - run.pos, 40000 - 32768);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, data);
}

#[test]
fn file_goes_out_with_sendfile_after_the_header() {
    let body = pattern(100_000, 3);
    let bufs = vec![mem(b"header"), flushed(file(1, &body, 0))];
    let want = concat(&bufs);
    let mut run = Run::new(bufs, true, 16384);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, want);
    // The header rides in the first record of the file data.
    assert_eq!(
        run.tls.ops,
        vec![Op::Kernel(6, true), Op::Sendfile(100_000)]
    );
    assert_eq!(run.tls.records, 100_006usize.div_ceil(RECORD));
}

#[test]
fn neighbouring_file_buffers_are_coalesced() {
    let body = pattern(30000, 4);
    let bufs = vec![
        file(1, &body[..10000], 0),
        file(1, &body[10000..], 10000),
        flushed(special(true)),
    ];
    let mut run = Run::new(bufs, true, 16384);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.ops, vec![Op::Sendfile(30000)]);
    assert_eq!(run.tls.out, body);
}

#[test]
fn different_files_are_separate_sendfiles() {
    let a = pattern(20000, 5);
    let b = pattern(30000, 6);
    let bufs = vec![file(1, &a, 0), file(2, &b, 0), flushed(special(true))];
    let mut run = Run::new(bufs, true, 16384);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.ops, vec![Op::Sendfile(20000), Op::Sendfile(30000)]);
}

#[test]
fn without_kernel_tls_files_are_read_into_the_buffer() {
    let body = pattern(20000, 7);
    let bufs = vec![mem(b"head"), file(1, &body, 0), flushed(mem(b"tail"))];
    let want = concat(&bufs);
    let mut run = Run::new(bufs, false, 16384);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, want);
    assert_eq!(
        run.tls.ops,
        vec![Op::Write(16384), Op::Write(want.len() - 16384)]
    );
}

#[test]
fn truncated_file_is_fatal_when_read() {
    let mut run = Run::new(vec![flushed(file(9, &pattern(100, 8), 0))], false, 16384);
    run.chain.truncated = Some(9);
    assert_eq!(run.call(LIMIT), Err(Fatal));
    assert!(run.tls.out.is_empty(), "nothing from a shrunk file is sent");
}

#[test]
fn limit_bounds_each_call() {
    let body = pattern(50000, 9);
    let bufs = vec![mem(b"hdr"), flushed(file(1, &body, 0))];
    let want = concat(&bufs);
    let mut run = Run::new(bufs, true, 16384);
    let mut calls = 0;
    loop {
        calls += 1;
        let before = run.tls.out.len();
        let buffered = run.call(8192).unwrap();
        assert!(
            run.tls.out.len() - before <= 8192,
            "a call sent more than its limit"
        );
        if run.chain.bufs.is_empty() && !buffered {
            break;
        }
        assert!(calls < 100);
    }
    assert_eq!(run.tls.out, want);
    assert!(run
        .tls
        .ops
        .iter()
        .all(|op| matches!(op, Op::Write(n) | Op::Kernel(n, _) | Op::Sendfile(n) if *n <= 8192)));
    assert_eq!(run.tls.open, 0, "a record was left open");
}

#[test]
fn short_writes_and_again_resume_exactly() {
    let body = pattern(200_000, 10);
    let bufs = vec![
        mem(&pattern(3000, 11)),
        file(1, &body, 0),
        mem(b"\r\n0\r\n\r\n"),
        flushed(special(true)),
    ];
    let want = concat(&bufs);
    for kernel in [false, true] {
        let mut run = Run::new(bufs.clone(), kernel, 16384);
        run.tls.per_call = 7000;
        run.run_to_end(20000);
        assert_eq!(run.tls.out, want, "kernel={kernel}");
        assert_eq!(run.tls.open, 0, "a record was left open");
        assert_more_only_before_sendfile(&run.tls.ops);
    }
}

#[test]
fn blocked_ssl_write_is_retried_before_the_kernel_is_used() {
    // OpenSSL wants an SSL_write() retried with the same bytes before
    // anything else goes out, even once kTLS could take the rest directly.
    let bufs = vec![
        mem(&pattern(1000, 12)),
        flushed(file(1, &pattern(20000, 13), 0)),
    ];
    let want = concat(&bufs);
    let mut run = Run::new(bufs, false, 16384);
    run.tls.room = 0;
    assert_eq!(run.call(LIMIT), Ok(true));
    assert!(run.tls.ssl_pending);
    run.tls.kernel = true;
    run.tls.room = usize::MAX;
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.ops, vec![Op::Write(16384), Op::Kernel(4616, false)]);
    assert_eq!(run.tls.out, want);
}

#[test]
fn sendfile_waits_until_openssl_allows_it() {
    // 0-RTT: the handshake is not finished, so file bytes go through the
    // record layer until it is.
    let body = pattern(80000, 14);
    let bufs = vec![file(1, &body, 0), flushed(special(true))];
    let mut run = Run::new(bufs, false, 16384);
    run.tls.room = 16384;
    assert_eq!(run.call(LIMIT), Ok(true));
    assert_eq!(run.tls.ops, vec![Op::Write(16384)]);
    run.tls.kernel = true;
    run.tls.room = usize::MAX;
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(
        run.tls.ops,
        vec![
            Op::Write(16384),
            Op::Write(16384),
            Op::Sendfile(80000 - 32768)
        ]
    );
    assert_eq!(run.tls.out, body);
}

#[test]
fn special_buffers_only_flush() {
    let bufs = vec![mem(b"a"), special(false), mem(b"b"), special(true)];
    let mut run = Run::new(bufs, false, 16384);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, b"ab");
    assert_eq!(run.tls.ops, vec![Op::Write(2)]);
}

#[test]
fn empty_chain_with_empty_buffer_does_nothing() {
    let mut run = Run::new(vec![], true, 16384);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert!(run.tls.ops.is_empty());
}

#[test]
fn write_failure_is_fatal() {
    let mut run = Run::new(vec![flushed(mem(b"x"))], false, 16384);
    run.tls.fail = true;
    assert_eq!(run.call(LIMIT), Err(Fatal));
}

#[test]
fn flush_survives_again() {
    // A flush that could not complete must still be pending next time,
    // even when no new buffer arrives with a flush flag.
    let mut run = Run::new(vec![flushed(mem(&pattern(100, 15)))], false, 16384);
    run.tls.room = 0;
    assert_eq!(run.call(LIMIT), Ok(true));
    assert!(run.flush);
    run.chain.bufs.push(mem(b"more"));
    run.tls.room = usize::MAX;
    assert_eq!(run.call(LIMIT), Ok(false));
    let mut want = pattern(100, 15);
    want.extend_from_slice(b"more");
    assert_eq!(run.tls.out, want);
}

/// After a thread's sendfile, what follows without a flush waits for a
/// full buffer again, as after a sendfile in the event loop.
#[test]
fn thread_sendfile_spends_the_flush() {
    let body = pattern(20_000, 3);
    let mut run = Run::new(vec![file(1, &body, 0)], true, 16384).with_threads();
    assert_eq!(run.call(LIMIT), Ok(false));
    assert!(run.flush);
    assert_eq!(run.finish_task(), Ok(true));
    run.chain.bufs.push(mem(b"tail"));
    assert_eq!(run.call(LIMIT), Ok(true));
    assert_eq!(run.tls.out, body);
    assert!(!run.flush);
}

/// Once the pipe went out whole, what follows without a flush waits.
#[test]
fn drained_pipe_spends_the_flush() {
    let bufs = vec![
        flushed(file(1, &pattern(100, 4), 0)),
        mem(&pattern(16384, 5)),
        mem(b"tail"),
    ];
    let mut run = Run::new(bufs, true, 16384);
    run.tls.pipe = Some(FakePipe {
        capacity: 1 << 20,
        ..FakePipe::default()
    });
    assert_eq!(run.call(LIMIT), Ok(true));
    assert_eq!(run.tls.out.len(), 16484);
    assert_eq!(run.last - run.pos, 4);
    assert!(!run.flush);
}

/// A sendfile that ends the call at its limit leaves no flush behind, even
/// one carried over an "again".
#[test]
fn sendfile_to_the_limit_spends_a_carried_flush() {
    let body = pattern(20_000, 6);
    let mut run = Run::new(vec![file(1, &body, 0)], true, 16384);
    run.tls.room = 0;
    assert_eq!(run.call(LIMIT), Ok(false));
    assert!(run.flush);
    run.tls.room = usize::MAX;
    assert_eq!(run.call(body.len() as u64), Ok(false));
    assert!(!run.flush);
    run.chain.bufs.push(mem(b"tail"));
    assert_eq!(run.call(LIMIT), Ok(true));
    assert_eq!(run.tls.out, body);
}

/// MSG_MORE holds a record open: only right before the file data that
/// closes it, never at the end of what a call writes.
fn assert_more_only_before_sendfile(ops: &[Op]) {
    for (i, op) in ops.iter().enumerate() {
        if let Op::Kernel(_, true) = op {
            assert!(
                matches!(
                    ops.get(i + 1),
                    Some(Op::Sendfile(_)) | Some(Op::Kernel(..)) | None
                ),
                "MSG_MORE not followed by the file data: {ops:?}"
            );
        }
    }
}

/// An HTTP/2 response as nginx chains it: a 9-byte DATA frame header
/// before each 8k of the file.
fn h2_frames(body: &[u8]) -> Vec<FakeBuf> {
    let mut bufs = vec![mem(&pattern(120, 20))];
    for (i, chunk) in body.chunks(8192).enumerate() {
        bufs.push(mem(&pattern(9, i as u8)));
        bufs.push(file(1, chunk, (i * 8192) as u64));
    }
    let last = bufs.len() - 1;
    bufs[last].flush = true;
    bufs
}

#[test]
fn h2_frames_fill_records_as_userspace_tls_does() {
    let body = pattern(1 << 20, 21);
    let bufs = h2_frames(&body);
    let want = concat(&bufs);

    let mut user = Run::new(bufs.clone(), false, 16384);
    assert_eq!(user.call(LIMIT), Ok(false));
    assert_eq!(user.tls.out, want);

    let mut ktls = Run::new(bufs, true, 16384);
    assert_eq!(ktls.call(LIMIT), Ok(false));
    assert_eq!(ktls.tls.out, want);
    assert_eq!(ktls.tls.open, 0);
    assert!(
        ktls.tls.records <= user.tls.records,
        "kTLS {} records, userspace {}",
        ktls.tls.records,
        user.tls.records
    );
    assert!(!ktls.tls.ops.iter().any(|op| matches!(op, Op::Sendfile(_))));
    // The file parts of one record are contiguous in the file: one read
    // each, not one per frame part.
    assert!(
        ktls.chain.read_calls <= ktls.tls.records,
        "{} reads for {} records",
        ktls.chain.read_calls,
        ktls.tls.records
    );
}

#[test]
fn http1_file_records_are_full() {
    let body = pattern(1 << 20, 22);
    let bufs = vec![mem(&pattern(300, 23)), flushed(file(1, &body, 0))];
    let want = concat(&bufs);
    let mut run = Run::new(bufs, true, 16384);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, want);
    assert_eq!(
        run.tls.ops,
        vec![Op::Kernel(300, true), Op::Sendfile(1 << 20)]
    );
    assert!(run.tls.records <= (1usize << 20).div_ceil(RECORD) + 2);
}

#[test]
fn small_file_shares_the_header_record() {
    let bufs = vec![
        mem(&pattern(200, 24)),
        flushed(file(1, &pattern(4096, 25), 0)),
    ];
    let want = concat(&bufs);
    let mut run = Run::new(bufs, true, 16384);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, want);
    assert_eq!(run.tls.ops, vec![Op::Kernel(4296, false)]);
    assert_eq!(run.tls.records, 1);
}

#[test]
fn chunked_response_with_again_keeps_order_and_closes_records() {
    // A chunk-size line, the file, the chunk end, with the socket filling
    // up at awkward places.
    let body = pattern(300_000, 26);
    let bufs = vec![
        mem(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        mem(b"493e0\r\n"),
        file(1, &body, 0),
        mem(b"\r\n0\r\n\r\n"),
        flushed(special(true)),
    ];
    let want = concat(&bufs);
    for room in [1, 7, 53, 4096, 16385, 70000] {
        let mut run = Run::new(bufs.clone(), true, 16384);
        run.run_to_end(room);
        assert_eq!(run.tls.out, want, "room {room}");
        assert_eq!(run.tls.open, 0, "room {room}: a record was left open");
        assert_more_only_before_sendfile(&run.tls.ops);
    }
}

/// Two HTTP/2 streams interleaved, each frame from its own file.
fn h2_two_streams(a: &[u8], b: &[u8]) -> Vec<FakeBuf> {
    let mut bufs = vec![mem(&pattern(120, 40))];
    for (i, (ca, cb)) in a.chunks(8192).zip(b.chunks(8192)).enumerate() {
        bufs.push(mem(&pattern(9, i as u8)));
        bufs.push(file(1, ca, (i * 8192) as u64));
        bufs.push(mem(&pattern(9, i as u8 ^ 0x55)));
        bufs.push(file(2, cb, (i * 8192) as u64));
    }
    let last = bufs.len() - 1;
    bufs[last].flush = true;
    bufs
}

/// Responses whose file I/O may go to a thread.
fn offload_cases() -> Vec<(&'static str, Vec<FakeBuf>)> {
    let big = pattern(300_000, 41);
    vec![
        (
            "http1 file",
            vec![mem(&pattern(300, 42)), flushed(file(1, &big, 0))],
        ),
        (
            "small file",
            vec![mem(&pattern(200, 43)), flushed(file(1, &big[..4096], 0))],
        ),
        ("h2 one stream", h2_frames(&big[..200_000])),
        (
            "h2 two streams",
            h2_two_streams(&big[..65536], &big[65536..131072]),
        ),
        (
            "chunked",
            vec![
                mem(b"493e0\r\n"),
                file(1, &big, 0),
                mem(b"\r\n0\r\n\r\n"),
                flushed(special(true)),
            ],
        ),
        (
            "ranges",
            vec![
                mem(b"--b\r\n"),
                file(1, &big[100..5000], 100),
                mem(b"\r\n--b\r\n"),
                file(1, &big[90_000..200_000], 90_000),
                mem(b"\r\n--b--\r\n"),
                flushed(special(true)),
            ],
        ),
    ]
}

#[test]
fn thread_offload_sends_what_the_event_loop_sends() {
    for (name, bufs) in offload_cases() {
        for kernel in [true, false] {
            let want = concat(&bufs);
            let mut plain = Run::new(bufs.clone(), kernel, 16384);
            plain.run_to_end(usize::MAX);
            let mut threads = Run::new(bufs.clone(), kernel, 16384).with_threads();
            threads.run_to_end(usize::MAX);
            let what = format!("{name}, kernel={kernel}");
            assert_eq!(threads.tls.out, want, "{what}");
            // The same system calls make the same records.
            assert_eq!(threads.tls.ops, plain.tls.ops, "{what}");
            assert_eq!(threads.tls.records, plain.tls.records, "{what}");
            assert_eq!(threads.tls.open, 0, "{what}: a record was left open");
            assert!(
                threads.tls.threads.borrow().posted > 0,
                "{what}: nothing offloaded"
            );
        }
    }
}

#[test]
fn thread_offload_with_a_full_socket_keeps_order() {
    for (name, bufs) in offload_cases() {
        for room in [1, 4096, 16385, 70000] {
            let want = concat(&bufs);
            let mut run = Run::new(bufs.clone(), true, 16384).with_threads();
            run.tls.per_call = 7000;
            run.run_to_end(room);
            assert_eq!(run.tls.out, want, "{name}, room {room}");
            assert_eq!(
                run.tls.open, 0,
                "{name}, room {room}: a record was left open"
            );
            assert_more_only_before_sendfile(&run.tls.ops);
        }
    }
}

#[test]
fn nothing_is_written_while_a_thread_works() {
    let body = pattern(100_000, 44);
    let bufs = vec![mem(b"header"), flushed(file(1, &body, 0))];
    let mut run = Run::new(bufs, true, 16384).with_threads();
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.ops, vec![Op::Kernel(6, true)]);
    assert!(run.tls.threads.borrow().running.is_some());

    // Another stream's frame arrives while the thread sends: it waits.
    run.chain
        .bufs
        .push(flushed(mem(b"frame of another stream")));
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.ops, vec![Op::Kernel(6, true)]);

    assert_eq!(run.finish_task(), Ok(true));
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(
        run.tls.ops,
        vec![
            Op::Kernel(6, true),
            Op::Sendfile(100_000),
            Op::Kernel(23, false)
        ]
    );
    let mut want = b"header".to_vec();
    want.extend_from_slice(&body);
    want.extend_from_slice(b"frame of another stream");
    assert_eq!(run.tls.out, want);
}

#[test]
fn buffer_filled_by_a_thread_is_written_only_when_it_is_done() {
    let bufs = vec![
        mem(&pattern(200, 45)),
        flushed(file(1, &pattern(4096, 46), 0)),
    ];
    let want = concat(&bufs);
    let mut run = Run::new(bufs, true, 16384).with_threads();
    assert_eq!(run.call(LIMIT), Ok(true), "the buffer holds the response");
    assert!(run.tls.ops.is_empty());
    assert!(run.chain.bufs.is_empty(), "the parts were taken");
    assert_eq!(run.call(LIMIT), Ok(true), "still busy");
    assert!(run.tls.ops.is_empty());
    assert_eq!(run.finish_task(), Ok(true));
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.ops, vec![Op::Kernel(4296, false)]);
    assert_eq!(run.tls.out, want);
}

#[test]
fn sendfile_from_a_thread_counts_against_the_limit() {
    let body = pattern(100_000, 47);
    let mut run = Run::new(vec![flushed(file(1, &body, 0))], true, 16384).with_threads();
    assert_eq!(run.call(30_000), Ok(false));
    assert_eq!(run.finish_task(), Ok(true));
    assert_eq!(run.tls.ops, vec![Op::Sendfile(30_000)]);
    // The call that collects those 30000 may send 10000 more, not 40000.
    assert_eq!(run.call(40_000), Ok(false));
    assert_eq!(run.finish_task(), Ok(true));
    assert_eq!(
        run.tls.ops,
        vec![Op::Sendfile(30_000), Op::Sendfile(10_000)]
    );
    assert_eq!(run.tls.out, &body[..40_000]);
}

#[test]
fn thread_sendfile_on_a_full_socket_waits_then_posts_again() {
    let body = pattern(50_000, 48);
    let mut run = Run::new(vec![flushed(file(1, &body, 0))], true, 16384).with_threads();
    run.tls.room = 0;
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.finish_task(), Ok(true));
    // Collected "again": nothing goes out, nothing is posted.
    assert_eq!(run.call(LIMIT), Ok(false));
    assert!(run.tls.threads.borrow().running.is_none());
    assert_eq!(run.tls.threads.borrow().posted, 1);
    run.tls.room = usize::MAX;
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.finish_task(), Ok(true));
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, body);
    assert!(run.chain.bufs.is_empty());
}

#[test]
fn truncated_file_read_by_a_thread_is_fatal() {
    let mut run =
        Run::new(vec![flushed(file(9, &pattern(100, 49), 0))], true, 16384).with_threads();
    run.chain.truncated = Some(9);
    assert_eq!(run.call(LIMIT), Ok(true));
    assert_eq!(run.finish_task(), Err(Fatal));
    assert!(run.tls.ops.is_empty(), "nothing of the file was sent");
}

mod model;
mod pipe;
