//! `send_chain` against a model, on random chains and random transports:
//! partial writes, "again" at any point, the kernel path allowed and
//! refused from call to call, threads, pipes of any size, a failure at any
//! write. After every call: the bytes out are the chain's, in order; no more
//! than the limit (or what was buffered before); the buffer in bounds; the
//! buffered flag true exactly when bytes wait; the bytes taken from the chain
//! equal those counted in `c->sent` plus those buffered or piped; nothing
//! buffered after a flush the transport took whole; nothing written after a
//! failure, and no kernel write while not allowed (the fake transport
//! asserts both). At the end: everything out, no record left open.
//!
//! Then the chain handed over in parts: no TLS record closes before a
//! flush, the limit or an empty call asks for it (see [`check_records`]).
//!
//! `PROPTEST_CASES=100000 cargo test --release --features vendored --lib
//! model` runs a longer search than the default.

use super::*;
use proptest::prelude::*;

/// One buffer of a generated chain.
#[derive(Clone, Debug)]
enum Gen {
    Memory(usize),
    /// A part of file 1..=3, following on from the previous part of that
    /// file when `next` is set.
    File {
        id: u8,
        len: usize,
        next: bool,
    },
    Special,
}

fn gen_buf() -> impl Strategy<Value = (Gen, bool)> {
    // nginx's write filter lets no empty buffer through but special ones;
    // the plan must pass over one all the same.
    let size = prop_oneof![
        1 => Just(0usize),
        8 => 1..20usize,
        8 => 1..20_000usize,
        8 => Just(8192usize),
        8 => 16_000..70_000usize
    ];
    let kind = prop_oneof![
        3 => size.clone().prop_map(Gen::Memory),
        4 => (1..=3u8, size, any::<bool>()).prop_map(|(id, len, next)| Gen::File { id, len, next }),
        1 => Just(Gen::Special),
    ];
    (kind, any::<bool>())
}

/// The chain as nginx would build it: file parts at increasing offsets.
fn build(gens: &[(Gen, bool)]) -> Vec<FakeBuf> {
    let mut offsets = [0u64; 4];
    let mut bufs: Vec<FakeBuf> = gens
        .iter()
        .enumerate()
        .map(|(i, (g, flush))| {
            let mut b = match *g {
                Gen::Memory(len) => mem(&pattern(len, i as u8)),
                Gen::Special => special(*flush),
                Gen::File { id, len, next } => {
                    if !next {
                        offsets[id as usize] += 4096;
                    }
                    let at = offsets[id as usize];
                    offsets[id as usize] += len as u64;
                    // The file's bytes depend only on the offset, as a real
                    // file's do, so neighbouring parts may be coalesced.
                    let bytes: Vec<u8> = (at..at + len as u64)
                        .map(|o| (o as u8).wrapping_mul(7) ^ id)
                        .collect();
                    file(id, &bytes, at)
                }
            };
            b.flush = *flush;
            b
        })
        .collect();
    bufs.push(special(true));
    bufs
}

/// What the transport does during one call.
#[derive(Clone, Debug)]
struct Step {
    room: usize,
    per_call: usize,
    limit: u64,
    kernel: bool,
    fail: bool,
}

fn gen_step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![Just(0usize), 1..50usize, 1..20_000usize, Just(usize::MAX)],
        prop_oneof![Just(usize::MAX), 1..10_000usize],
        prop_oneof![Just(LIMIT), 1..100u64, 1..40_000u64],
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.03),
    )
        .prop_map(|(room, per_call, limit, kernel, fail)| Step {
            room,
            per_call,
            limit,
            kernel,
            fail,
        })
}

#[derive(Clone, Debug)]
struct Setup {
    bufsize: usize,
    sendfile_min: u64,
    threads: bool,
    pipe: Option<usize>,
    uncached: bool,
    refuses: bool,
}

fn gen_setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![Just(16384usize), 1..20_000usize],
        prop_oneof![Just(MIN), Just(0u64), 1..70_000u64],
        any::<bool>(),
        prop::option::of(prop_oneof![1..20usize, 1..40_000usize, Just(1usize << 20)]),
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(bufsize, sendfile_min, threads, pipe, uncached, refuses)| Setup {
                bufsize,
                sendfile_min,
                threads,
                pipe,
                uncached,
                refuses,
            },
        )
}

/// Bytes gone from the chain: what `ngx_chain_update_sent()` and the copies
/// into the buffer advanced past.
fn taken(run: &Run, total: usize) -> usize {
    total - run.chain.bufs.iter().map(|b| b.rest().len()).sum::<usize>()
}

/// What `c->sent` holds: every byte the transport took, except those of a
/// thread's sendfile that the next call has not collected yet.
fn counted_sent(run: &Run) -> usize {
    let uncollected = match run.tls.threads.borrow().finished {
        Some(Collected::Sent(n)) => n as usize,
        _ => 0,
    };
    run.tls.out.len() - uncollected
}

/// A kTLS connection with the buffer, pipe and threads of `setup`.
fn set_up(bufs: Vec<FakeBuf>, setup: &Setup) -> Run {
    let mut run = Run::new(bufs, true, setup.bufsize);
    run.sendfile_min = setup.sendfile_min;
    if setup.threads {
        run = run.with_threads();
    }
    if let Some(capacity) = setup.pipe {
        run.tls.pipe = Some(FakePipe {
            capacity,
            uncached: setup.uncached,
            refuses: setup.refuses,
            ..FakePipe::default()
        });
    }
    run
}

/// Runs the chain through the steps, then to the end with a transport that
/// takes everything; checks the invariants after every call.
fn check(gens: &[(Gen, bool)], setup: &Setup, steps: &[Step]) -> Result<(), TestCaseError> {
    let bufs = build(gens);
    let want = concat(&bufs);
    let mut run = set_up(bufs, setup);
    let all = Step {
        room: usize::MAX,
        per_call: usize::MAX,
        limit: LIMIT,
        kernel: true,
        fail: false,
    };
    let ends = std::iter::repeat_n(&all, 2 * want.len() / setup.bufsize.max(1) + 16);
    for step in steps.iter().chain(ends) {
        // The kernel path comes and goes (a KeyUpdate, 0-RTT), but never
        // with a record of the kernel's half written.
        if run.tls.open == 0 {
            run.tls.kernel = step.kernel;
        }
        run.tls.room = step.room;
        run.tls.per_call = step.per_call;
        run.tls.fail = step.fail;
        let before = run.tls.out.len();
        // Bytes already buffered count against the limit, and go out
        // whole (nginx's rule).
        let pending = run.last - run.pos + run.tls.piped();
        let result = run.call(step.limit);
        prop_assert!(
            run.pos <= run.last && run.last <= run.mem.len(),
            "buffer out of bounds"
        );
        prop_assert!(
            run.tls.out.len() - before <= (step.limit as usize).max(pending),
            "a call sent more than its limit"
        );
        prop_assert_eq!(
            &run.tls.out[..],
            &want[..run.tls.out.len()],
            "bytes out of order"
        );
        let buffered = match result {
            Err(Fatal) => {
                // The fake transport asserts that nothing was written after
                // the failure; nginx closes the connection then.
                prop_assert!(run.tls.failed, "fatal without a failure");
                return Ok(());
            }
            Ok(buffered) => buffered,
        };
        prop_assert_eq!(
            buffered,
            run.pos < run.last || run.tls.piped() > 0,
            "the buffered flag"
        );
        prop_assert_eq!(
            taken(&run, want.len()),
            counted_sent(&run) + (run.last - run.pos) + run.tls.piped(),
            "bytes taken from the chain are not those counted sent, buffered or piped"
        );
        // The chain ends with a flush: once it is all taken, a transport
        // that took everything leaves nothing buffered.
        let took_all = step.room == usize::MAX && step.per_call == usize::MAX;
        if took_all
            && step.limit == LIMIT
            && run.chain.bufs.is_empty()
            && run.tls.threads.borrow().running.is_none()
        {
            prop_assert!(!buffered, "bytes left buffered after the flush");
        }
        run.finish_task().expect("a thread's job");
        if run.chain.bufs.is_empty() && !buffered && run.tls.threads.borrow().running.is_none() {
            break;
        }
    }
    prop_assert_eq!(run.tls.out.len(), want.len(), "not everything went out");
    prop_assert_eq!(run.tls.open, 0, "a record was left open");
    prop_assert!(run.chain.bufs.is_empty());
    Ok(())
}

/// One call of a chain that nginx hands over in parts, as its write filter
/// does: the buffers that arrive before the call, the call's limit, and
/// whether the kernel path is allowed.
#[derive(Clone, Debug)]
struct Part {
    bufs: usize,
    limit: u64,
    kernel: bool,
    /// The socket takes nothing in this call: every write is "again".
    full: bool,
}

fn gen_part() -> impl Strategy<Value = Part> {
    (
        0..4usize,
        prop_oneof![3 => Just(LIMIT), 1 => 1..40_000u64],
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(bufs, limit, kernel, full)| Part {
            bufs,
            limit,
            kernel,
            full,
        })
}

/// Where the chain asks for its bytes to go out: the output range of each
/// buffer marked flush (empty for a special buffer).
fn flush_marks(bufs: &[FakeBuf]) -> Vec<(usize, usize)> {
    let mut at = 0;
    let mut marks = vec![];
    for b in bufs {
        let len = b.rest().len();
        if b.flush {
            marks.push((at, at + len));
        }
        at += len;
    }
    marks
}

/// Whether the bytes `from..to` of a write that closes a TLS record were
/// asked out by a flush: a flushed buffer among them, or a special flush
/// buffer right before, within or right after them.
fn asked_out(marks: &[(usize, usize)], from: usize, to: usize) -> bool {
    marks.iter().any(|&(s, e)| {
        if s == e {
            from <= s && s <= to
        } else {
            s < to && e > from
        }
    })
}

/// Feeds the chain in parts to a socket that takes everything or nothing, and
/// checks that no TLS record is closed before nginx's rules say so: a
/// record shorter than the buffer needs a flush among its bytes, a call
/// that reached its limit, or a call with nothing new to send
/// (`ngx_ssl_send_chain()`'s `in == NULL`). Also: a call that leaves
/// nothing buffered leaves no record open.
fn check_records(gens: &[(Gen, bool)], setup: &Setup, parts: &[Part]) -> Result<(), TestCaseError> {
    let bufs = build(gens);
    let marks = flush_marks(&bufs);
    let total = concat(&bufs).len();
    let mut rest: std::collections::VecDeque<FakeBuf> = bufs.into();
    let mut run = set_up(vec![], setup);
    // For each op: whether its call allows short records whatever the
    // flush marks say.
    let mut excused = vec![];
    // Whether the flush left pending by the last call (`buf->flush`, kept
    // over an "again") came from such a call.
    let mut excuse_pending = false;
    let mut fed = 0;
    let all = Part {
        bufs: usize::MAX,
        limit: LIMIT,
        kernel: true,
        full: false,
    };
    let ends = std::iter::repeat_n(&all, 2 * total / setup.bufsize.max(1) + 16);
    for part in parts.iter().chain(ends) {
        for b in rest.drain(..part.bufs.min(rest.len())) {
            fed += b.rest().len();
            run.chain.bufs.push(b);
        }
        if run.tls.open == 0 {
            run.tls.kernel = part.kernel;
        }
        // A socket that takes all or nothing: every write is whole.
        run.tls.room = if part.full { 0 } else { usize::MAX };
        let nothing_new = run.chain.bufs.is_empty();
        let flush_before = run.flush;
        let pending = run.last - run.pos + run.tls.piped();
        let taken_before = taken(&run, fed);
        let buffered = run.call(part.limit).expect("a transport without failures");
        let taken_now = taken(&run, fed) - taken_before;
        let reached = (pending + taken_now) as u64 >= part.limit;
        let excuse = reached || nothing_new || flush_before && excuse_pending;
        excused.resize(run.tls.ops.len(), excuse);
        excuse_pending = run.flush && (excuse || part.full);
        if !buffered && run.tls.threads.borrow().running.is_none() {
            prop_assert_eq!(
                run.tls.open,
                0,
                "a record left open by a call that sent everything"
            );
        }
        // A thread's sendfile ends its record itself.
        run.finish_task().expect("a thread's job");
        excused.resize(run.tls.ops.len(), true);
        if rest.is_empty()
            && run.chain.bufs.is_empty()
            && !buffered
            && run.tls.threads.borrow().running.is_none()
        {
            break;
        }
    }
    prop_assert_eq!(run.tls.out.len(), total, "not everything went out");

    // The output offset where the record being written began.
    let mut record = 0;
    let mut at = 0;
    let ops = &run.tls.ops;
    for (i, op) in ops.iter().enumerate() {
        let (n, closes) = match *op {
            Op::Write(n) | Op::Sendfile(n) => (n, true),
            Op::Kernel(n, more) | Op::Drain(n, more) => (n, !more),
            Op::PipeMemory(_) | Op::PipeFile(_) => (0, false),
        };
        at += n;
        if !closes {
            continue;
        }
        // The pipe's bytes and then the buffer's through OpenSSL are one
        // flush of the two.
        let (start, end) = match (i.checked_sub(1).map(|j| &ops[j]), op, ops.get(i + 1)) {
            (_, Op::Drain(..), Some(Op::Write(w))) => (record, at + w),
            (Some(Op::Drain(d, false)), Op::Write(_), _) => (record - d, at),
            _ => (record, at),
        };
        let file = matches!(op, Op::Sendfile(_));
        if !file && end - start < setup.bufsize && !excused[i] {
            prop_assert!(
                asked_out(&marks, start, end),
                "a record of {} bytes at {} closed with no flush asking for it: {:?}",
                at - record,
                record,
                ops
            );
        }
        record = at;
    }
    Ok(())
}

proptest! {
    // Minimised failures are kept as the plain tests below, not in a seed
    // file of proptest's.
    #![proptest_config(ProptestConfig {
        // An explicit count wins over PROPTEST_CASES, so read it here.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(400),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn send_chain_follows_the_model(
        gens in prop::collection::vec(gen_buf(), 0..12),
        setup in gen_setup(),
        steps in prop::collection::vec(gen_step(), 0..30),
    ) {
        check(&gens, &setup, &steps)?;
    }

    #[test]
    fn records_close_only_when_asked(
        gens in prop::collection::vec(gen_buf(), 0..12),
        setup in gen_setup(),
        parts in prop::collection::vec(gen_part(), 0..30),
    ) {
        check_records(&gens, &setup, &parts)?;
    }
}

// Cases the model found, minimised, kept as plain tests.

/// Bytes buffered by an earlier call go out whole, even past a smaller
/// limit in this call (nginx's `ngx_ssl_send_chain()` counts them first).
#[test]
fn buffered_bytes_go_out_whole_past_a_smaller_limit() {
    let body = pattern(10_000, 1);
    let bufs = vec![flushed(mem(&body))];
    let mut run = Run::new(bufs, false, 16384);
    run.tls.room = 0;
    assert_eq!(run.call(LIMIT), Ok(true));
    run.tls.room = usize::MAX;
    assert_eq!(run.call(100), Ok(false));
    assert_eq!(run.tls.out, body);
}

/// Empty buffers, which nginx's write filter never passes on, are passed
/// over; with `ktls_sendfile_min_size 0`, an empty file part once became an
/// `SSL_sendfile()` of no bytes.
#[test]
fn empty_buffers_are_passed_over() {
    let bufs = vec![
        mem(b""),
        file(1, b"", 0),
        mem(b"abc"),
        file(2, b"", 4096),
        flushed(special(true)),
    ];
    for (kernel, sendfile_min, threads) in [
        (false, MIN, false),
        (true, MIN, false),
        (true, MIN, true),
        (true, 0, false),
    ] {
        let mut run = Run::new(bufs.clone(), kernel, 16384);
        if threads {
            run = run.with_threads();
        }
        run.sendfile_min = sendfile_min;
        assert_eq!(run.call(LIMIT), Ok(false), "kernel={kernel}");
        assert_eq!(run.tls.out, b"abc", "kernel={kernel}");
        assert!(run.chain.bufs.is_empty());
    }
}
