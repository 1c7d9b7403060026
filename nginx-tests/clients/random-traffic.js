// Seeded random traffic from Node's own HTTP/2 and HTTPS clients, an implementation this
// project did not write: whole files, ranges (single and multiple), HEAD, keepalive, small
// and large flow-control windows, readers that pause, and requests the client cancels.
//
// Usage: node random-traffic.js PORT DIR SEED SECONDS [PREFIX]
// DIR holds the files the server serves at PREFIXNAME (PREFIX: / by default). Prints one JSON line: what was asked and
// what came back per outcome, and every mismatch (a body that differs from the file, a status
// that is not the expected one, a stream or connection that failed without being cancelled).
'use strict';

const fs = require('fs');
const http2 = require('http2');
const https = require('https');
const path = require('path');

const [port, dir, seedArg, secondsArg, prefix = '/'] = process.argv.slice(2);
const deadline = Date.now() + Number(secondsArg) * 1000;
const origin = `https://127.0.0.1:${port}`;

// mulberry32: small, seedable, the same sequence on every Node.
let state = Number(seedArg) >>> 0;
function random() {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const below = (n) => Math.floor(random() * n);
const pick = (items) => items[below(items.length)];

const files = fs
  .readdirSync(dir, { withFileTypes: true })
  .filter((entry) => entry.isFile())
  .map((entry) => ({ name: entry.name, data: fs.readFileSync(path.join(dir, entry.name)) }))
  .sort((a, b) => (a.name < b.name ? -1 : 1));

const totals = { requests: 0, complete: 0, cancelled: 0, head: 0, ranges: 0, bytes: 0 };
const mismatches = [];
const fail = (what) => {
  if (mismatches.length < 20) mismatches.push(what);
};

// The run's first request always completes: a whole GET of a file of at most 1 MiB, read at
// full speed and left out of the cancels at the deadline, so that a slow server (sanitizers,
// emulated kernels) still shows complete answers to check.
let witnessDue = true;
function witness() {
  witnessDue = false;
  const file = pick(files.filter((f) => f.data.length <= 1 << 20));
  return { file, method: 'GET', headers: {}, ranges: null, cancelAfter: -1, slow: false, witness: true };
}

// A request: what to ask and what a correct answer is.
function plan() {
  if (witnessDue) return witness();
  const file = pick(files);
  const size = file.data.length;
  const roll = random();
  const req = { file, method: 'GET', headers: {}, ranges: null, cancelAfter: -1 };
  if (roll < 0.1) {
    req.method = 'HEAD';
  } else if (roll < 0.3 && size > 1) {
    const count = random() < 0.5 ? 1 : 2 + below(3);
    const ranges = [];
    for (let i = 0; i < count; i++) {
      const a = below(size);
      const b = Math.min(size - 1, a + below(Math.min(size - a, 1 << 18)));
      ranges.push([a, b]);
    }
    ranges.sort((x, y) => x[0] - y[0]);
    // nginx answers overlapping ranges with the whole file; keep them apart.
    const apart = [];
    for (const r of ranges) {
      if (apart.length === 0 || r[0] > apart[apart.length - 1][1] + 1) apart.push(r);
    }
    req.ranges = apart;
    req.headers.range = 'bytes=' + apart.map((r) => `${r[0]}-${r[1]}`).join(',');
  } else if (roll < 0.5 && size > 1024) {
    req.cancelAfter = below(Math.min(size, 1 << 20));
  }
  req.slow = random() < 0.25;
  return req;
}

// Where `got` first differs from `want`, and how many bytes differ from there on: a
// mismatch says where to look (a record, a frame, a buffer boundary).
function difference(got, want) {
  let first = 0;
  while (first < got.length && first < want.length && got[first] === want[first]) first++;
  let differing = 0;
  for (let i = first; i < Math.min(got.length, want.length); i++) {
    if (got[i] !== want[i]) differing++;
  }
  return `first difference at byte ${first}, ${differing} bytes differ`;
}

// Checks a complete answer against the file.
function check(req, status, headers, body) {
  const { file } = req;
  const what = `${req.method} /${file.name} ${req.headers.range || ''}`;
  if (req.method === 'HEAD') {
    totals.head++;
    if (status !== 200 || body.length !== 0) fail(`${what}: status ${status}, ${body.length} bytes`);
    return;
  }
  if (!req.ranges) {
    if (status !== 200 || !body.equals(file.data)) {
      fail(`${what}: status ${status}, ${body.length} of ${file.data.length} bytes, not the file ` +
        `(${difference(body, file.data)})`);
    }
    return;
  }
  totals.ranges++;
  if (status !== 206) return fail(`${what}: status ${status}`);
  if (req.ranges.length === 1) {
    const [a, b] = req.ranges[0];
    const want = file.data.subarray(a, b + 1);
    if (!body.equals(want)) fail(`${what}: range body differs (${difference(body, want)})`);
    return;
  }
  const m = /boundary=(\S+)/.exec(headers['content-type'] || '');
  if (!m) return fail(`${what}: no multipart boundary`);
  const parts = body.toString('latin1').split(`--${m[1]}`).slice(1, -1);
  if (parts.length !== req.ranges.length) return fail(`${what}: ${parts.length} parts`);
  parts.forEach((part, i) => {
    const [a, b] = req.ranges[i];
    const data = Buffer.from(part.slice(part.indexOf('\r\n\r\n') + 4, -2), 'latin1');
    if (!part.includes(`bytes ${a}-${b}/`) || !data.equals(file.data.subarray(a, b + 1))) {
      fail(`${what}: part ${i} differs`);
    }
  });
}

// What is still being read, cancelled at the deadline: many cancels at once, at random points.
const reading = new Set();
setTimeout(() => {
  for (const cancel of reading) cancel();
}, deadline - Date.now()).unref();

// Reads a response stream, pausing now and then for a slow reader, cancelling after
// req.cancelAfter bytes; calls done(true) when it completed.  An HTTP/2 stream also ends
// when its connection closes in the middle of a frame (Node hands over the partial frame
// and a close code, CANCEL): only one that ended with END_STREAM (`ended()` says) completed.
function consume(req, stream, cancel, done, ended = () => true) {
  const chunks = [];
  let got = 0;
  let finished = false;
  const end = (complete) => {
    if (finished) return;
    finished = true;
    reading.delete(stopNow);
    done(complete, Buffer.concat(chunks));
  };
  const stopNow = () => {
    totals.cancelled++;
    end(false);
    cancel();
  };
  if (!req.witness) reading.add(stopNow);
  stream.on('data', (chunk) => {
    if (finished) return;
    chunks.push(chunk);
    got += chunk.length;
    totals.bytes += chunk.length;
    if (req.cancelAfter >= 0 && got >= req.cancelAfter) {
      stopNow();
      return;
    }
    if (req.slow && random() < 0.2) {
      stream.pause();
      setTimeout(() => stream.resume(), 5 + below(50));
    }
  });
  stream.on('end', () => {
    if (finished || ended()) return end(true);
    fail(`${req.method} /${req.file.name}: the connection closed in the middle of the ` +
      `response, after ${got} bytes (stream close code ${stream.rstCode})`);
    end(false);
  });
  stream.on('error', (e) => {
    if (!finished) fail(`/${req.file.name}: stream error ${e.code || e.message}`);
    end(false);
  });
  stream.on('close', () => end(false));
}

function h2Connection() {
  return new Promise((resolve) => {
    const window = pick([1024, 16384, 65535, 1 << 20]);
    const session = http2.connect(origin, {
      rejectUnauthorized: false,
      settings: { initialWindowSize: window },
    });
    session.on('error', (e) => fail(`h2 session (window ${window}): ${e.code || e.message}`));
    // A session that fails closes too: the run goes on and reports it.
    session.on('close', resolve);
    const count = 4 + below(29);
    let open = count;
    const finish = () => {
      if (--open === 0) session.close();
    };
    for (let i = 0; i < count; i++) {
      const req = plan();
      totals.requests++;
      const stream = session.request({
        ':path': prefix + req.file.name,
        ':method': req.method,
        ...req.headers,
      });
      let status = 0;
      let headers = {};
      stream.on('response', (h) => {
        status = h[':status'];
        headers = h;
      });
      const cancel = () => stream.close(http2.constants.NGHTTP2_CANCEL);
      const ended = () => stream.rstCode === http2.constants.NGHTTP2_NO_ERROR;
      consume(req, stream, cancel, (complete, body) => {
        if (complete) {
          totals.complete++;
          check(req, status, headers, body);
        }
        finish();
      }, ended);
      stream.end();
    }
  });
}

function h1Connection() {
  return new Promise((resolve) => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1, rejectUnauthorized: false });
    let left = 1 + below(8);
    const next = () => {
      if (left-- === 0 || Date.now() >= deadline) {
        agent.destroy();
        resolve();
        return;
      }
      const req = plan();
      totals.requests++;
      const r = https.request(
        { host: '127.0.0.1', port, path: prefix + req.file.name, method: req.method,
          headers: req.headers, agent },
        (res) => {
          consume(req, res, () => res.destroy(), (complete, body) => {
            if (complete) {
              totals.complete++;
              check(req, res.statusCode, res.headers, body);
            }
            next();
          });
        },
      );
      r.on('error', (e) => {
        if (req.cancelAfter < 0) fail(`h1 /${req.file.name}: ${e.code || e.message}`);
      });
      r.end();
    };
    next();
  });
}

async function lane() {
  while (Date.now() < deadline) {
    await (random() < 0.7 ? h2Connection() : h1Connection());
  }
}

const report = () => console.log(JSON.stringify({ seed: Number(seedArg), totals, mismatches }));
let reported = false;
process.on('exit', () => {
  if (!reported) {
    fail('the event loop ended with connections unfinished');
    report();
  }
});

// Six connections at a time.
Promise.all([0, 1, 2, 3, 4, 5].map(lane)).then(() => {
  reported = true;
  report();
});
