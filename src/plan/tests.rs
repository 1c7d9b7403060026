//! Drives [`send_chain`] with a chain of in-memory "files" and a transport
//! that records what went out and how.

use super::*;

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

struct FakeChain {
    bufs: Vec<FakeBuf>,
    /// A file that shrank under us: reads of it fail.
    truncated: Option<u8>,
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
        }
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

    fn read_file(&mut self, dst: &mut [u8]) -> Result<(), Fatal> {
        let b = &mut self.bufs[0];
        let Data::File(id, ..) = b.data else {
            panic!("read from a non-file buffer")
        };
        if self.truncated == Some(id) {
            return Err(Fatal);
        }
        dst.copy_from_slice(&b.rest()[..dst.len()]);
        b.pos += dst.len();
        self.pop_if_done();
        Ok(())
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
    Write(usize),
    Sendfile(usize),
}

struct FakeTls {
    kernel: bool,
    /// How many bytes the socket still takes before it says "again".
    room: usize,
    /// At most this many bytes per call (short writes).
    per_call: usize,
    out: Vec<u8>,
    ops: Vec<Op>,
    fail: bool,
}

impl FakeTls {
    fn new(kernel: bool) -> Self {
        FakeTls {
            kernel,
            room: usize::MAX,
            per_call: usize::MAX,
            out: vec![],
            ops: vec![],
            fail: false,
        }
    }

    fn accept(&mut self, len: usize) -> usize {
        len.min(self.room).min(self.per_call)
    }
}

impl Transport<FakeChain> for FakeTls {
    fn sendfile_allowed(&mut self) -> bool {
        self.kernel
    }

    fn write(&mut self, data: &[u8]) -> Result<Io, Fatal> {
        assert!(!data.is_empty(), "empty SSL_write");
        if self.fail {
            return Err(Fatal);
        }
        let n = self.accept(data.len());
        if n == 0 {
            return Ok(Io::Again);
        }
        self.ops.push(Op::Write(n));
        self.out.extend_from_slice(&data[..n]);
        self.room -= n;
        Ok(Io::Sent(n))
    }

    fn sendfile(&mut self, chain: &FakeChain, len: usize) -> Result<Io, Fatal> {
        assert!(self.kernel, "sendfile without kTLS");
        assert!(len > 0, "empty SSL_sendfile");
        assert_eq!(
            len as u64,
            chain.file_run(len as u64),
            "sendfile beyond the file run"
        );
        let n = self.accept(len);
        if n == 0 {
            return Ok(Io::Again);
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
        Ok(Io::Sent(n))
    }
}

const LIMIT: u64 = i32::MAX as u64 - 4096;

struct Run {
    chain: FakeChain,
    tls: FakeTls,
    mem: Vec<u8>,
    pos: usize,
    last: usize,
    flush: bool,
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
        }
    }

    fn call(&mut self, limit: u64) -> Result<bool, Fatal> {
        let mut buf = SendBuf {
            mem: &mut self.mem,
            pos: self.pos,
            last: self.last,
            flush: self.flush,
        };
        let r = send_chain(&mut self.chain, &mut buf, &mut self.tls, limit);
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
    let mut run = Run::new(vec![mem(b"hello")], true, 16384);
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
    assert_eq!(run.tls.ops, vec![Op::Write(6), Op::Sendfile(100_000)]);
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
    let a = pattern(5000, 5);
    let b = pattern(7000, 6);
    let bufs = vec![file(1, &a, 0), file(2, &b, 0), flushed(special(true))];
    let mut run = Run::new(bufs, true, 16384);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.ops, vec![Op::Sendfile(5000), Op::Sendfile(7000)]);
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
        .all(|op| matches!(op, Op::Write(n) | Op::Sendfile(n) if *n <= 8192)));
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
        let mut rounds = 0;
        loop {
            run.tls.room = 20000;
            let buffered = run.call(LIMIT).unwrap();
            if run.chain.bufs.is_empty() && !buffered {
                break;
            }
            rounds += 1;
            assert!(rounds < 1000, "no progress");
        }
        assert_eq!(run.tls.out, want, "kernel={kernel}");
    }
}

#[test]
fn partial_record_write_is_retried_before_sendfile() {
    // OpenSSL wants an SSL_write() retried with the same bytes before
    // anything else goes out; sendfile must not overtake it.
    let bufs = vec![
        mem(&pattern(1000, 12)),
        flushed(file(1, &pattern(5000, 13), 0)),
    ];
    let want = concat(&bufs);
    let mut run = Run::new(bufs, true, 16384);
    run.tls.room = 600;
    assert_eq!(run.call(LIMIT), Ok(true));
    assert_eq!(run.tls.ops, vec![Op::Write(600)]);
    run.tls.room = usize::MAX;
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(
        run.tls.ops,
        vec![Op::Write(600), Op::Write(400), Op::Sendfile(5000)]
    );
    assert_eq!(run.tls.out, want);
}

#[test]
fn sendfile_waits_until_openssl_allows_it() {
    // 0-RTT: the handshake is not finished, so file bytes go through the
    // record layer until it is.
    let body = pattern(40000, 14);
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
            Op::Sendfile(40000 - 32768)
        ]
    );
    assert_eq!(run.tls.out, body);
}

#[test]
fn special_buffers_only_flush() {
    let bufs = vec![mem(b"a"), special(false), mem(b"b"), special(true)];
    let mut run = Run::new(bufs, true, 16384);
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
