#!/usr/bin/env python3
"""A TCP relay that emulates a WAN link (asyncio, standard library only).

    linkemu.py --listen PORT --target HOST:PORT --rtt-ms R --mbit M [--control PORT] [--hold] ...
    linkemu.py --selftest [--mbit 100] [--selftest-mb 50] [--selftest-rtts 0,50]

Every TCP connection accepted on --listen is relayed to --target. The relay
models ONE shared link per direction, which every connection uses in
arrival order (FIFO):

  * each chunk read from a socket is stamped on arrival and cut into
    segments of at most --segment bytes (16 KiB: 1.3 ms at 100 Mbit/s, so
    the store-and-forward granularity stays small);
  * a segment occupies the link for its serialization time, bytes x 8 / rate,
    starting when it arrived or when the link finished the previous segment
    of ANY connection in that direction, whichever is later;
  * it is then delivered one-way delay (RTT / 2) later, plus an optional
    random jitter in [0, --jitter-ms], never before the previous segment of
    the same connection (jitter never reorders within a connection);
  * a new connection's first client data is stamped no earlier than one RTT
    after the connection began (the TCP handshake it would have paid); the
    relay's own connection to the target is made at once (loopback).

Per connection and direction the relay holds at most --window bytes (default
4 MiB) that were read but not yet delivered: beyond that it stops reading
that socket until deliveries bring it back under the window, so a sender
cannot push unboundedly (it sees the backpressure through its kernel socket
buffers, which the relay sets to --sockbuf bytes, 256 KiB by default, so they
add little hidden buffering). A destination that does not read stalls
delivery (its segments are delivered late, as TCP would stall). TCP_NODELAY
is set on every socket. A half-close (FIN) travels as the last segment of
its direction and is delivered after the data before it (shutdown(SHUT_WR)
on the other socket); a connection is closed once both directions delivered
their end (a reset counts as an end).

What it does not model: it terminates TCP on both sides, so TCP's own
congestion control, slow start, ACK clocking and receive window over the
WAN are not emulated; the --window bound stands in for the window. No loss.

Control (--control PORT, one command per line on a TCP connection, one JSON
line answered): `stats` (counters), `release` (with --hold: connections
accepted so far were held unread and not connected onward; from now on they
and new ones proceed, their handshake RTT counted from this moment; answers
the release time, CLOCK_MONOTONIC seconds like Python's time.monotonic() in
any process), `drop` (abort the connections held so far: a held socket is
not read, so a client's death would go unnoticed), `quit`.

Stats: per direction (`up` = toward the target, `down` = back) bytes read
and delivered, the time of the first byte read and of the last delivery;
connections; timer lateness (how much later than scheduled segments were
written: the emulator's own error); process CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import socket
import sys
import time

SEGMENT = 16 * 1024
WINDOW = 4 * 1024 * 1024
SOCKBUF = 256 * 1024
WRITE_HIGH = 256 * 1024  # a destination's transport buffer above this: stop delivering to it
# asyncio's epoll wait rounds its timeout up to whole milliseconds, so a timer
# fires 0-1 ms late: arm timers EARLY before and deliver what is due within
# EARLY of now, which centres the error on zero (measured: `lateness`).
EARLY = 0.0005


class Link:
    """One direction of the emulated link, shared by every connection."""

    def __init__(self, name: str, bps: float, delay: float, jitter: float):
        self.name = name
        self.bps = bps
        self.delay = delay
        self.jitter = jitter
        self.free_at = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped = 0
        self.first_in: float | None = None
        self.last_out: float | None = None

    def serialize(self, n: int, arrival: float) -> float:
        """Occupy the link with n bytes arriving at `arrival`; return when the
        last bit left."""
        start = arrival if arrival > self.free_at else self.free_at
        fin = start + (n * 8 / self.bps if self.bps > 0 else 0.0)
        self.free_at = fin
        return fin

    def stats(self) -> dict:
        return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "dropped": self.dropped,
                "first_in": self.first_in, "last_out": self.last_out}


class Lateness:
    """Write time minus scheduled delivery time of the first segment of each
    write (negative: early, by at most EARLY)."""

    def __init__(self):
        self.n = 0
        self.total = 0.0
        self.max = 0.0
        self.min = 0.0
        self.over_2ms = 0

    def add(self, late: float) -> None:
        self.n += 1
        self.total += late
        if late > self.max:
            self.max = late
        if late < self.min:
            self.min = late
        if late > 0.002:
            self.over_2ms += 1

    def stats(self) -> dict:
        return {"writes": self.n, "mean_ms": self.total / self.n * 1e3 if self.n else 0.0,
                "max_ms": self.max * 1e3, "min_ms": self.min * 1e3, "over_2ms": self.over_2ms}


class Pipe:
    """One direction of one relayed connection: src socket -> link -> dst socket."""

    def __init__(self, emu: "Emulator", conn: "Conn", link: Link, src: "Side", dst: "Side", not_before: float):
        self.emu = emu
        self.conn = conn
        self.link = link
        self.src = src
        self.dst = dst
        self.not_before = not_before
        self.queue: collections.deque = collections.deque()  # (deliver_at, memoryview | None=end)
        self.inflight = 0
        self.src_paused = False
        self.timer: asyncio.TimerHandle | None = None
        self.last_at = 0.0
        self.stalled = False    # the destination blocked since the timer was armed
        self.ended = False      # the end (FIN/close) was queued
        self.end_delivered = False

    def feed(self, data: bytes) -> None:
        loop = self.emu.loop
        now = loop.time()
        link = self.link
        if link.first_in is None:
            link.first_in = now
        link.bytes_in += len(data)
        arrival = now if now > self.not_before else self.not_before
        mv = memoryview(data)
        seg = self.emu.segment
        jitter = link.jitter
        for off in range(0, len(mv), seg):
            piece = mv[off:off + seg]
            at = link.serialize(len(piece), arrival) + link.delay
            if jitter:
                at += random.uniform(0.0, jitter)
            if at < self.last_at:
                at = self.last_at
            self.last_at = at
            self.queue.append((at, piece))
        self.inflight += len(data)
        if self.inflight > self.emu.window and not self.src_paused:
            self.src_paused = True
            self.src.pause()
        self.arm()

    def end(self) -> None:
        """The source half-closed or closed: deliver the end after the data."""
        if self.ended:
            return
        self.ended = True
        now = self.emu.loop.time()
        arrival = now if now > self.not_before else self.not_before
        at = max(self.link.serialize(0, arrival) + self.link.delay, self.last_at)
        self.last_at = at
        self.queue.append((at, None))
        self.arm()

    def arm(self) -> None:
        if self.timer is None and self.queue and not self.dst.blocked:
            self.timer = self.emu.loop.call_at(self.queue[0][0] - EARLY, self.fire)

    def fire(self) -> None:
        self.timer = None
        if self.dst.blocked:
            return
        loop = self.emu.loop
        now = loop.time()
        q = self.queue
        first_at = q[0][0]
        parts = []
        n = 0
        end = False
        due = now + EARLY
        while q and q[0][0] <= due:
            at, piece = q.popleft()
            if piece is None:
                end = True
                break
            parts.append(piece)
            n += len(piece)
        if self.stalled:
            self.stalled = False  # late because the destination did not read: not a timer error
        else:
            self.emu.late.add(now - first_at)
        if n:
            self.inflight -= n
            if self.dst.writable():
                self.dst.transport.write(b"".join(parts))
                self.link.bytes_out += n
                self.link.last_out = now
            else:
                self.link.dropped += n
        if end:
            self.end_delivered = True
            self.dst.deliver_end()
            self.conn.maybe_close()
        if self.src_paused and self.inflight <= self.emu.window:
            self.src_paused = False
            self.src.resume()
        self.arm()


class Side(asyncio.Protocol):
    """One socket of a relayed connection (the accepted client or the
    connection to the target)."""

    def __init__(self, conn: "Conn", name: str):
        self.conn = conn
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.blocked = False       # its write buffer is above WRITE_HIGH
        self.closed = False
        self.shut = False          # we shut down its write side
        self.out_pipe: Pipe | None = None  # data read here goes there
        self.in_pipe: Pipe | None = None   # data written here comes from there
        self.pending: list[bytes] = []     # read before the pipes existed (paused right away, rare)
        self.pending_end = False
        self.read_paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            tune(sock, self.conn.emu.sockbuf)
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.conn.made(self)

    def data_received(self, data: bytes) -> None:
        if self.out_pipe is None:
            self.pending.append(data)
        else:
            self.out_pipe.feed(data)

    def eof_received(self):
        if self.out_pipe is None:
            self.pending_end = True
        else:
            self.out_pipe.end()
        return True  # keep our write side open (half-close)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.blocked:
            self.blocked = False
            if self.in_pipe is not None:
                self.in_pipe.arm()
        if self.out_pipe is None:
            self.pending_end = True
        else:
            self.out_pipe.end()
        self.conn.lost(self)

    def pause_writing(self) -> None:
        self.blocked = True
        if self.in_pipe is not None:
            self.in_pipe.stalled = True
        if self.in_pipe is not None and self.in_pipe.timer is not None:
            self.in_pipe.timer.cancel()
            self.in_pipe.timer = None

    def resume_writing(self) -> None:
        self.blocked = False
        if self.in_pipe is not None:
            self.in_pipe.arm()

    def pause(self) -> None:
        if not self.closed and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if not self.closed and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def writable(self) -> bool:
        return not self.closed and not self.shut and self.transport is not None and not self.transport.is_closing()

    def deliver_end(self) -> None:
        if self.writable():
            self.shut = True
            if self.transport.can_write_eof():
                self.transport.write_eof()  # after its buffered data
            else:
                self.transport.close()


class Conn:
    def __init__(self, emu: "Emulator"):
        self.emu = emu
        self.client = Side(self, "client")
        self.server: Side | None = None
        self.up: Pipe | None = None
        self.down: Pipe | None = None
        self.done = False

    def made(self, side: Side) -> None:
        if side is self.client:
            side.pause()
            self.emu.accepted(self)

    def start(self, t0: float) -> None:
        """Connect onward; the handshake RTT counts from t0."""
        self.emu.loop.create_task(self._connect(t0))

    async def _connect(self, t0: float) -> None:
        emu = self.emu
        emu.relayed += 1
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tune(sock, emu.sockbuf)
            sock.setblocking(False)
            await emu.loop.sock_connect(sock, emu.target)
            self.server = Side(self, "server")
            await emu.loop.create_connection(lambda: self.server, sock=sock)
        except OSError as e:
            emu.connect_failures += 1
            print(f"linkemu: connecting to {emu.target[0]}:{emu.target[1]} failed: {e}", file=sys.stderr, flush=True)
            if self.client.transport is not None:
                self.client.transport.abort()
            self.done = True
            emu.open.discard(self)
            return
        self.up = Pipe(emu, self, emu.up, self.client, self.server, t0 + emu.rtt)
        self.down = Pipe(emu, self, emu.down, self.server, self.client, 0.0)
        self.client.out_pipe = self.server.in_pipe = self.up
        self.server.out_pipe = self.client.in_pipe = self.down
        for side in (self.client, self.server):
            for data in side.pending:
                side.out_pipe.feed(data)
            side.pending.clear()
            if side.pending_end:
                side.out_pipe.end()
        if self.client.closed and self.up is not None and not self.up.ended:
            self.up.end()
        self.client.resume()

    def lost(self, side: Side) -> None:
        # not connected onward yet: _connect() passes the end on
        self.maybe_close()

    def maybe_close(self) -> None:
        if self.done or self.up is None:
            return
        if self.up.end_delivered and self.down.end_delivered:
            self.done = True
            for side in (self.client, self.server):
                if side.transport is not None and not side.closed:
                    side.transport.close()  # flushes what is buffered first
            self.emu.open.discard(self)


def tune(sock: socket.socket, bufsize: int) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    if bufsize > 0:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, bufsize)
            except OSError:
                pass


class Emulator:
    def __init__(self, args):
        self.args = args
        host, _, port = args.target.rpartition(":")
        self.target = (host or "127.0.0.1", int(port))
        self.rtt = args.rtt_ms / 1e3
        bps = args.mbit * 1e6
        self.up = Link("up", bps, self.rtt / 2, args.jitter_ms / 1e3)
        self.down = Link("down", bps, self.rtt / 2, args.jitter_ms / 1e3)
        self.window = args.window
        self.segment = args.segment
        self.sockbuf = args.sockbuf
        self.held: list[Conn] | None = [] if args.hold else None
        self.released_at: float | None = None
        self.open: set[Conn] = set()
        self.conns = 0
        self.relayed = 0
        self.connect_failures = 0
        self.late = Lateness()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped: asyncio.Event | None = None

    def accepted(self, conn: Conn) -> None:
        self.conns += 1
        self.open.add(conn)
        if self.held is not None:
            self.held.append(conn)
        else:
            conn.start(self.loop.time())

    def release(self) -> float:
        now = self.loop.time()
        if self.held is not None:
            held, self.held = self.held, None
            self.released_at = now
            for c in held:
                if c.client.closed:
                    self.open.discard(c)
                else:
                    c.start(now)
        return self.released_at if self.released_at is not None else now

    def drop_held(self) -> int:
        """Abort the connections held so far (e.g. of a client that died:
        a held socket is not read, so its end would go unnoticed)."""
        if self.held is None:
            return 0
        held, self.held = self.held, []
        for c in held:
            if c.client.transport is not None and not c.client.closed:
                c.client.transport.abort()
            self.open.discard(c)
        return len(held)

    def held_live(self) -> int:
        return sum(1 for c in self.held if not c.client.closed) if self.held is not None else 0

    def stats(self) -> dict:
        return {"up": self.up.stats(), "down": self.down.stats(), "connections": self.conns, "relayed": self.relayed,
                "open": len(self.open), "connect_failures": self.connect_failures,
                "held": self.held_live(), "released_at": self.released_at,
                "lateness": self.late.stats(), "cpu_s": time.process_time(), "now": self.loop.time(),
                "rtt_ms": self.args.rtt_ms, "mbit": self.args.mbit, "jitter_ms": self.args.jitter_ms,
                "window": self.window, "segment": self.segment}

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                cmd = line.decode().strip()
                if cmd == "stats":
                    reply = self.stats()
                elif cmd == "release":
                    reply = {"released_at": self.release()}
                elif cmd == "drop":
                    reply = {"dropped": self.drop_held()}
                elif cmd == "quit":
                    reply = {"ok": True}
                    self.stopped.set()
                else:
                    reply = {"error": f"unknown command {cmd!r}"}
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tune(lsock, self.sockbuf)  # accepted sockets inherit the buffer sizes (window scale at SYN)
        lsock.bind((self.args.listen_host, self.args.listen))
        lsock.listen(128)
        lsock.setblocking(False)
        server = await self.loop.create_server(lambda: Conn(self).client, sock=lsock)
        ctl = None
        if self.args.control:
            ctl = await asyncio.start_server(self.control, "127.0.0.1", self.args.control)
        print(f"linkemu: {self.args.listen_host}:{self.args.listen} -> {self.target[0]}:{self.target[1]}, "
              f"RTT {self.args.rtt_ms} ms, {self.args.mbit} Mbit/s, jitter {self.args.jitter_ms} ms, window "
              f"{self.window}, {'held until release' if self.held is not None else 'open'}", file=sys.stderr, flush=True)
        await self.stopped.wait()
        server.close()
        if ctl is not None:
            ctl.close()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=int, help="port to accept connections on")
    p.add_argument("--listen-host", default="127.0.0.1")
    p.add_argument("--target", help="HOST:PORT to relay to")
    p.add_argument("--rtt-ms", type=float, default=50.0, help="round-trip time (default 50; one-way = RTT/2)")
    p.add_argument("--mbit", type=float, default=100.0, help="link rate per direction, Mbit/s (default 100; 0 = unlimited)")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="extra one-way delay, uniform in [0, J] (default 0)")
    p.add_argument("--window", type=int, default=WINDOW, help=f"bytes in flight per connection and direction (default {WINDOW})")
    p.add_argument("--segment", type=int, default=SEGMENT, help=f"scheduling segment, bytes (default {SEGMENT})")
    p.add_argument("--sockbuf", type=int, default=SOCKBUF,
                   help=f"SO_RCVBUF/SO_SNDBUF of the relay's sockets (default {SOCKBUF}; 0 = kernel autotuning)")
    p.add_argument("--control", type=int, help="control port on 127.0.0.1 (stats, release, quit)")
    p.add_argument("--hold", action="store_true", help="hold connections unread until `release`")
    p.add_argument("--selftest", action="store_true", help="measure the emulator itself and exit")
    p.add_argument("--selftest-mb", type=float, default=50.0, help="MB pushed each way per self-test run (default 50)")
    p.add_argument("--selftest-rtts", default="0,50", help="RTTs (ms) of the self-test runs (default 0,50)")
    a = p.parse_args(argv)
    if not a.selftest and (a.listen is None or not a.target):
        p.error("--listen and --target are needed (or --selftest)")
    return a


# ---------------------------------------------------------------- self-test

def control_cmd(port: int, cmd: str, timeout: float = 10.0) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(cmd.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf.decode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _selftest_one(rtt_ms: float, mbit: float, nbytes: int) -> dict:
    """Start an emulator process toward a local server; measure idle RTT
    (ping-pong), then push nbytes each way at once on one connection while
    pinging on another (latency under load)."""
    import subprocess
    loop = asyncio.get_running_loop()
    block = b"x" * 65536
    res: dict = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            await serve_one(reader, writer)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kind = await reader.readexactly(1)
        if kind == b"P":  # echo
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        else:  # bulk: send nbytes while reading nbytes
            async def sink():
                got = 0
                while got < nbytes:
                    d = await reader.read(1 << 20)
                    if not d:
                        break
                    if not got:
                        res["up_first"] = time.monotonic()
                    got += len(d)
                res["server_got"] = got
                res["up_last"] = time.monotonic()

            t = loop.create_task(sink())
            sent = 0
            while sent < nbytes:
                n = min(len(block), nbytes - sent)
                writer.write(block[:n])
                sent += n
                await writer.drain()
            await t

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    sport = server.sockets[0].getsockname()[1]
    lport, cport = free_port(), free_port()
    emu = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--listen", str(lport), "--target",
                            f"127.0.0.1:{sport}", "--rtt-ms", str(rtt_ms), "--mbit", str(mbit), "--control", str(cport)],
                           stdin=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                await loop.run_in_executor(None, control_cmd, cport, "stats")
                break
            except OSError:
                await asyncio.sleep(0.05)

        async def ping(n: int, gap: float, port: int = lport) -> list[float]:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            w.write(b"P")
            out = []
            for _ in range(n):
                t0 = time.monotonic()
                w.write(b"p" * 64)
                await r.readexactly(64)
                out.append(time.monotonic() - t0)
                await asyncio.sleep(gap)
            w.close()
            return out

        direct = await ping(10, 0.02, sport)
        res["direct_rtt_ms"] = sorted(direct)[len(direct) // 2] * 1e3
        idle = await ping(10, 0.02)
        res["idle_rtt_ms"] = sorted(idle)[len(idle) // 2] * 1e3
        res["idle_rtt_max_ms"] = max(idle) * 1e3

        r, w = await asyncio.open_connection("127.0.0.1", lport)
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cpu0 = (await loop.run_in_executor(None, control_cmd, cport, "stats"))["cpu_s"]
        t0 = time.monotonic()
        w.write(b"B")

        async def down():
            got = 0
            while got < nbytes:
                d = await r.read(1 << 20)
                if not d:
                    break
                if not got:
                    res["down_first"] = time.monotonic()
                got += len(d)
            res["client_got"] = got
            res["down_last"] = time.monotonic()

        async def up():
            sent = 0
            while sent < nbytes:
                n = min(len(block), nbytes - sent)
                w.write(block[:n])
                sent += n
                await w.drain()

        async def loaded_ping():
            await asyncio.sleep(0.5 + rtt_ms / 1e3)
            return await ping(5, 0.1)

        _, _, loaded = await asyncio.gather(down(), up(), loaded_ping())
        st = await loop.run_in_executor(None, control_cmd, cport, "stats")
        w.close()
        wall = max(res["up_last"], res["down_last"]) - t0
        res["loaded_rtt_ms"] = sorted(loaded)[len(loaded) // 2] * 1e3
        res["up_mbit"] = nbytes * 8 / (res["up_last"] - res["up_first"]) / 1e6
        res["down_mbit"] = nbytes * 8 / (res["down_last"] - res["down_first"]) / 1e6
        # the model's time until the last byte came back: the server starts sending once the
        # first byte arrived (handshake RTT + one-way delay), serialization, one-way delay
        res["model_s"] = nbytes * 8 / (mbit * 1e6) + 2 * rtt_ms / 1e3 if mbit else float("nan")
        res["wall_s"] = wall
        res["stats"] = st
        res["cpu_s"] = st["cpu_s"] - cpu0
        if res.get("server_got") != nbytes or res.get("client_got") != nbytes:
            raise SystemExit(f"selftest: lost data: server got {res.get('server_got')}, client got "
                             f"{res.get('client_got')} of {nbytes}")
        return res
    finally:
        try:
            control_cmd(cport, "quit", 2.0)
        except OSError:
            pass
        try:
            emu.wait(timeout=5)
        except subprocess.TimeoutExpired:
            emu.kill()
            emu.wait()
        server.close()


def selftest(args) -> int:
    nbytes = int(args.selftest_mb * 1e6)
    rtts = [float(x) for x in args.selftest_rtts.split(",") if x.strip()]
    print(f"# linkemu self-test: {nbytes / 1e6:.0f} MB each way at once over one connection, {args.mbit:g} Mbit/s "
          f"per direction, window {WINDOW >> 20} MiB, segment {SEGMENT >> 10} KiB; cpus {os.cpu_count()}")
    print(f"{'RTT ms':>6} {'up Mbit/s':>10} {'down Mbit/s':>11} {'wall s':>7} {'model s':>7} "
          f"{'idle RTT ms':>11} {'RTT+ ms':>8} {'loaded RTT ms':>13} {'late mean/max ms':>16} {'emu CPU %':>9}")
    ok = True
    for rtt in rtts:
        r = asyncio.run(_selftest_one(rtt, args.mbit, nbytes))
        late = r["stats"]["lateness"]
        cpu_pct = r["cpu_s"] / r["wall_s"] * 100
        print(f"{rtt:>6g} {r['up_mbit']:>10.1f} {r['down_mbit']:>11.1f} {r['wall_s']:>7.2f} {r['model_s']:>7.2f} "
              f"{r['idle_rtt_ms']:>11.2f} {r['idle_rtt_ms'] - rtt - r['direct_rtt_ms']:>8.2f} {r['loaded_rtt_ms']:>13.1f} "
              f"{late['mean_ms']:>7.2f}/{late['max_ms']:<8.2f} {cpu_pct:>9.0f}")
        if min(r["up_mbit"], r["down_mbit"]) < 0.95 * args.mbit:
            ok = False
    print("# up/down: payload bits / (first to last byte received at the far end), both directions at once;")
    print("#   wall s: start to the last byte back; model s: bytes x 8 / rate + 2 RTT (handshake, the reply's")
    print("#   start, the last byte's flight). RTT+: idle ping-pong RTT minus the configured RTT and minus")
    print("#   the same ping without the relay (the relay's own added delay, two passes; median of 10).")
    print("#   loaded RTT: a second connection's ping while the bulk transfer fills the shared link both")
    print("#   ways (each direction's FIFO holds up to one window, 4 MiB = 335 ms at 100 Mbit/s).")
    print("#   late: how much later than scheduled the relay wrote segments (timer error).")
    print("# verdict: " + ("keeps up (>= 95 % of the link rate both ways)" if ok else "DOES NOT keep up"))
    return 0 if ok else 1


def main() -> int:
    args = parse_args()
    if args.selftest:
        return selftest(args)
    emu = Emulator(args)
    try:
        asyncio.run(emu.serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
