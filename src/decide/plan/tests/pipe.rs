//! The pipe: short file runs spliced, the memory around them written into
//! the same pipe, and the pipe spliced to the socket.

use super::*;

fn with_pipe(bufs: Vec<FakeBuf>, capacity: usize) -> Run {
    let mut run = Run::new(bufs, true, 16384);
    run.tls.pipe = Some(FakePipe {
        capacity,
        ..FakePipe::default()
    });
    run
}

fn count(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
    ops.iter().filter(|op| f(op)).count()
}

#[test]
fn h2_frames_go_through_the_pipe_unread_in_full_records() {
    let body = pattern(1 << 20, 60);
    let bufs = h2_frames(&body);
    let frames = body.len() / 8192;
    let want = concat(&bufs);

    let mut read = Run::new(bufs.clone(), true, 16384);
    assert_eq!(read.call(LIMIT), Ok(false));

    let mut run = with_pipe(bufs, 1 << 20);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, want);
    assert_eq!(run.chain.read_calls, 0, "file bytes were read");
    assert_eq!(run.tls.open, 0, "a record was left open");
    assert!(
        run.tls.records <= read.tls.records,
        "pipe {} records, buffer {}",
        run.tls.records,
        read.tls.records
    );
    // A frame header and a splice per frame, and a drain per pipe-full:
    // about what nginx's own path takes (a write and a sendfile a frame).
    let ops = &run.tls.ops;
    // (The pipe fills once, cutting a part in two.)
    assert_eq!(count(ops, |op| matches!(op, Op::Drain(..))), 2);
    assert_eq!(ops.len(), 2 * frames + 3);
    assert_eq!(run.tls.piped(), 0);
}

#[test]
fn neighbouring_file_parts_are_one_splice() {
    let body = pattern(12000, 61);
    let bufs = vec![
        mem(b"hdr"),
        file(1, &body[..5000], 0),
        file(1, &body[5000..], 5000),
        flushed(mem(b"end")),
    ];
    let want = concat(&bufs);
    let mut run = with_pipe(bufs, 1 << 20);
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, want);
    assert_eq!(
        run.tls.ops,
        vec![
            Op::PipeMemory(3),
            Op::PipeFile(12000),
            Op::PipeMemory(3),
            Op::Drain(12006, false)
        ]
    );
}

#[test]
fn full_pipe_and_full_socket_keep_order_and_close_records() {
    for (name, bufs) in offload_cases() {
        for capacity in [1, 9, 5000, 20000, 1 << 20] {
            for room in [1, 7, 4096, 16385, 70000, usize::MAX] {
                let want = concat(&bufs);
                let mut run = with_pipe(bufs.clone(), capacity);
                run.tls.per_call = 7000;
                run.run_to_end(room);
                let what = format!("{name}, pipe {capacity}, room {room}");
                assert_eq!(run.tls.out, want, "{what}");
                assert_eq!(run.tls.open, 0, "{what}: a record was left open");
                assert_eq!(run.tls.piped(), 0, "{what}: bytes left in the pipe");
            }
        }
    }
}

#[test]
fn refused_splice_reads_into_the_buffer_from_then_on() {
    for (name, bufs) in offload_cases() {
        for room in [7, 16385, usize::MAX] {
            let mut run = with_pipe(bufs.clone(), 1 << 20);
            run.tls.pipe.as_mut().unwrap().refuses = true;
            run.tls.per_call = 7000;
            run.run_to_end(room);
            let what = format!("{name}, room {room}");
            assert_eq!(run.tls.out, concat(&bufs), "{what}");
            assert_eq!(run.tls.open, 0, "{what}: a record was left open");
            assert!(
                !run.tls.ops.iter().any(|op| matches!(op, Op::PipeFile(_))),
                "{what}"
            );
        }
    }
}

#[test]
fn files_a_thread_must_read_do_not_go_through_the_pipe() {
    for (name, bufs) in offload_cases() {
        let mut plain = Run::new(bufs.clone(), true, 16384).with_threads();
        plain.run_to_end(usize::MAX);
        let mut run = with_pipe(bufs.clone(), 1 << 20).with_threads();
        run.tls.pipe.as_mut().unwrap().uncached = true;
        run.run_to_end(usize::MAX);
        assert_eq!(run.tls.out, concat(&bufs), "{name}");
        assert_eq!(run.tls.ops, plain.tls.ops, "{name}");
    }
}

#[test]
fn cached_files_are_spliced_on_the_event_loop_with_threads() {
    let body = pattern(200_000, 62);
    let mut run = with_pipe(h2_frames(&body), 1 << 20).with_threads();
    run.run_to_end(usize::MAX);
    assert_eq!(run.tls.out, concat(&h2_frames(&body)));
    assert_eq!(run.tls.threads.borrow().posted, 0);
    assert_eq!(run.chain.read_calls, 0);
}

#[test]
fn truncated_file_in_the_pipe_is_fatal() {
    let bufs = vec![mem(b"hdr"), flushed(file(9, &pattern(100, 63), 0))];
    let mut run = with_pipe(bufs, 1 << 20);
    run.chain.truncated = Some(9);
    assert_eq!(run.call(LIMIT), Err(Fatal));
    assert!(run.tls.out.is_empty(), "nothing from a shrunk file is sent");
}

#[test]
fn limit_bounds_each_call_through_the_pipe() {
    let body = pattern(100_000, 64);
    let bufs = h2_frames(&body);
    let want = concat(&bufs);
    let mut run = with_pipe(bufs, 1 << 20);
    for calls in 0.. {
        assert!(calls < 100, "no progress");
        let before = run.tls.out.len();
        let buffered = run.call(8192).unwrap();
        assert!(
            run.tls.out.len() - before <= 8192,
            "a call sent more than its limit"
        );
        assert_eq!(run.tls.open, 0, "a call ended inside an open record");
        if run.chain.bufs.is_empty() && !buffered {
            break;
        }
    }
    assert_eq!(run.tls.out, want);
}

#[test]
fn pipe_bytes_go_out_before_openssl_writes_again() {
    // The socket fills with bytes in the pipe; then OpenSSL has to write
    // (a KeyUpdate queued): the pipe's bytes still go first.
    let body = pattern(8192, 65);
    let bufs = vec![mem(b"hdr"), flushed(file(1, &body, 0))];
    let mut want = concat(&bufs);
    let mut run = with_pipe(bufs, 1 << 20);
    run.tls.room = 100;
    assert_eq!(run.call(LIMIT), Ok(true), "the pipe holds the rest");
    assert!(run.tls.piped() > 0);

    run.tls.kernel = false;
    run.tls.room = usize::MAX;
    run.chain.bufs.push(flushed(mem(b"next frame")));
    want.extend_from_slice(b"next frame");
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.out, want);
    assert_eq!(run.tls.ops.last(), Some(&Op::Write(10)));
    assert_eq!(run.tls.open, 0);
}

#[test]
fn bytes_in_the_pipe_keep_the_connection_buffered() {
    let mut run = with_pipe(
        vec![mem(b"hdr"), flushed(file(1, &pattern(5000, 66), 0))],
        1 << 20,
    );
    run.tls.room = 0;
    assert_eq!(run.call(LIMIT), Ok(true));
    assert!(run.chain.bufs.is_empty(), "the chain went into the pipe");
    assert_eq!((run.pos, run.last), (0, 0), "and the buffer with it");
    run.tls.room = usize::MAX;
    assert_eq!(run.call(LIMIT), Ok(false));
    assert_eq!(run.tls.ops.last(), Some(&Op::Drain(5003, false)));
}
