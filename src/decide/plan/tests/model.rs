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

/// Runs the chain through the steps, then to the end with a transport that
/// takes everything; checks the invariants after every call.
fn check(gens: &[(Gen, bool)], setup: &Setup, steps: &[Step]) -> Result<(), TestCaseError> {
    let bufs = build(gens);
    let want = concat(&bufs);
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

proptest! {
    // Minimised failures are kept as the plain tests below, not in a seed
    // file of proptest's.
    #![proptest_config(ProptestConfig {
        cases: 400,
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
