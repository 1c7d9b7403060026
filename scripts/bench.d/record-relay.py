#!/usr/bin/python3
"""Loopback TCP relay that counts the TLS records a server sends.

    record-relay.py --control PORT LISTEN_PORT:TARGET_PORT [...]

For each LISTEN_PORT:TARGET_PORT pair it accepts connections on
127.0.0.1:LISTEN_PORT, connects each one to 127.0.0.1:TARGET_PORT and copies
bytes both ways. TLS record headers (type, version, 16-bit length) are
plaintext, so the server-to-client stream can be split into records without
any key: the relay counts records per type, application-data records whose
length is under 1 KiB, and bytes.

Counters are kept per listening port. Commands on the control port
(127.0.0.1:PORT), one line each, answered with one line:
  take LISTEN_PORT       the counters accumulated since the previous "take" of
                         that port, as space-separated key=value, and resets them
  handshake LISTEN_PORT  makes one TLS connection through LISTEN_PORT that
                         completes the handshake, reads what the server sends
                         unasked (TLS 1.3 session tickets) and closes without a
                         request: the per-connection records to subtract
  quit                   stops the relay
The bench talks to it with bash's /dev/tcp, so no process is started per
measurement.

Why threads and blocking sockets: the bench runs one client connection at a
time, so two threads per connection are cheap, and blocking sendall() keeps
the copying simple and correct; the GIL is released during recv/send.
Records are counted before the bytes are forwarded: once the client has
received everything, the counts are complete.
"""

import socket
import ssl
import sys
import threading
import time

# TLS ContentType values; in TLS 1.3 everything after the ServerHello is
# wrapped in application_data (23), including NewSessionTicket and alerts.
CONTENT_TYPES = {20: "ccs", 21: "alert", 22: "handshake", 23: "appdata"}
SMALL_RECORD = 1024
BUFFER_SIZE = 256 * 1024


class Counters:
    """Counters for one listening port; updated by relay threads."""

    FIELDS = ("connections", "records", "appdata", "appdata_small", "handshake",
              "ccs", "alert", "other", "bytes_s2c", "bytes_c2s", "bad")

    def __init__(self):
        self.lock = threading.Lock()
        self.values = dict.fromkeys(self.FIELDS, 0)

    def add(self, deltas):
        with self.lock:
            for key, value in deltas.items():
                self.values[key] += value

    def take(self):
        with self.lock:
            taken = self.values
            self.values = dict.fromkeys(self.FIELDS, 0)
        return " ".join(f"{key}={taken[key]}" for key in self.FIELDS)


class RecordParser:
    """Splits a byte stream into TLS records across arbitrary chunk borders."""

    def __init__(self):
        self.header = bytearray()
        self.skip = 0  # bytes of the current record's body still to come
        self.broken = False  # stream is not TLS: stop parsing, keep relaying

    def feed(self, data, deltas):
        pos, end = 0, len(data)
        while pos < end and not self.broken:
            if self.skip:
                step = min(self.skip, end - pos)
                self.skip -= step
                pos += step
                continue
            step = min(5 - len(self.header), end - pos)
            self.header += data[pos:pos + step]
            pos += step
            if len(self.header) < 5:
                break
            content_type = self.header[0]
            length = (self.header[3] << 8) | self.header[4]
            self.header.clear()
            if self.header_is_implausible(content_type, length):
                self.broken = True
                deltas["bad"] += 1
                break
            self.skip = length
            name = CONTENT_TYPES.get(content_type, "other")
            deltas["records"] += 1
            deltas[name] += 1
            if name == "appdata" and length < SMALL_RECORD:
                deltas["appdata_small"] += 1

    @staticmethod
    def header_is_implausible(content_type, length):
        # 2^14 plaintext + 2048 expansion is TLS 1.2's ciphertext limit.
        return content_type not in CONTENT_TYPES or length > 16384 + 2048


def pump(source, sink, counters, parser):
    """Copies source to sink until EOF or error; parses if parser is given."""
    buffer = bytearray(BUFFER_SIZE)
    view = memoryview(buffer)
    direction = "bytes_s2c" if parser else "bytes_c2s"
    try:
        while True:
            count = source.recv_into(buffer)
            if count == 0:
                break
            deltas = dict.fromkeys(Counters.FIELDS, 0)
            deltas[direction] = count
            if parser:
                parser.feed(view[:count], deltas)
            counters.add(deltas)
            sink.sendall(view[:count])
    except OSError:
        pass
    finally:
        # Pass the end on: half-close so the other direction can finish.
        for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


def serve_connection(client, target_port, counters):
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port))
    except OSError:
        client.close()
        return
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    counters.add({"connections": 1})
    to_server = threading.Thread(target=pump, args=(client, upstream, counters, None),
                                 daemon=True)
    to_server.start()
    pump(upstream, client, counters, RecordParser())
    to_server.join()
    client.close()
    upstream.close()


def accept_loop(listener, target_port, counters):
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(client, target_port, counters),
                         daemon=True).start()


def listen_on(port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    return listener


def handshake_only(port):
    """A TLS connection through our own port that sends no request."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw) as tls:
            # Session tickets follow the handshake; reading processes them.
            tls.settimeout(0.3)
            try:
                tls.recv(1)
            except (socket.timeout, ssl.SSLError, OSError):
                pass
            version = tls.version()
            # Close the TCP connection without a close_notify: that alert
            # would be one more record that no request-carrying client sends
            # (SSLSocket.shutdown shuts the TCP socket down, no alert.)
            tls.shutdown(socket.SHUT_RDWR)
    # The relay thread counts what the server sent before it saw our end.
    time.sleep(0.1)
    return version


def control_loop(listener, counters_by_port):
    while True:
        conn, _ = listener.accept()
        with conn, conn.makefile("rw") as stream:
            words = stream.readline().split()
            if words == ["quit"]:
                return
            port = int(words[1]) if len(words) == 2 and words[1].isdigit() else None
            if port not in counters_by_port:
                stream.write("error unknown command\n")
            elif words[0] == "take":
                stream.write(counters_by_port[port].take() + "\n")
            elif words[0] == "handshake":
                try:
                    stream.write(f"ok {handshake_only(port)}\n")
                except OSError as error:
                    stream.write(f"error {error}\n")
            else:
                stream.write("error unknown command\n")


def main(argv):
    if len(argv) < 3 or argv[0] != "--control":
        sys.exit(__doc__)
    control = listen_on(int(argv[1]))
    counters_by_port = {}
    for pair in argv[2:]:
        listen_port, target_port = (int(part) for part in pair.split(":"))
        counters = counters_by_port[listen_port] = Counters()
        threading.Thread(target=accept_loop,
                         args=(listen_on(listen_port), target_port, counters),
                         daemon=True).start()
    print("ready", flush=True)
    control_loop(control, counters_by_port)


if __name__ == "__main__":
    main(sys.argv[1:])
