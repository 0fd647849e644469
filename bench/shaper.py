#!/usr/bin/env python3
"""shaper.py: the emulated WAN link of the cold-start benchmark, with byte counters.

Same link model as /work/shared/peers/delay-proxy.py (fixed one-way delay on every
chunk in each direction, one token bucket per direction shared by all connections,
one RTT of "handshake" before a new connection's first byte), plus counters that
the benchmark reads between runs, because every system under test (full pull,
podman, stargz-snapshotter, skiff) fetches through this one proxy:

  shaper.py --listen 127.0.0.1:5001 --upstream 127.0.0.1:5000 \
            --delay-ms 10 --rate-mbit 100 --control 127.0.0.1:5002

Control port: send one line, get one line back:
  "get"   -> "down=BYTES up=BYTES conns=N"   (down = registry -> client)
  "reset" -> the same, then all counters are zeroed
Loopback addresses only: the benchmark must never shape or count real traffic.
"""
import argparse
import asyncio
import ipaddress
import time

CHUNK = 64 * 1024


class Link:
    """One direction of the emulated link: fixed delay + optional rate."""

    def __init__(self, delay, rate_bps):
        self.delay, self.rate, self.free_at = delay, rate_bps, 0.0
        self.bytes = 0

    def departure(self, n):
        # serialisation on a shared link (if rate-limited), then propagation
        self.bytes += n
        now = time.monotonic()
        start = max(now, self.free_at)
        if self.rate:
            self.free_at = start + n * 8 / self.rate
            start = self.free_at
        return start + self.delay


async def pump(reader, writer, link, not_before):
    q = asyncio.Queue(maxsize=256)

    async def rx():
        while True:
            data = await reader.read(CHUNK)
            await q.put((max(link.departure(len(data)), not_before), data))
            if not data:
                return

    async def tx():
        while True:
            due, data = await q.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:  # EOF: half-close like the peer did
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.create_task(rx()), asyncio.create_task(tx())]
    try:
        await asyncio.gather(*tasks)
    except (ConnectionError, OSError):
        writer.close()
    finally:
        for t in tasks:
            t.cancel()


PRIVATE_OK = False


def loopback(hostport):
    host, port = hostport.rsplit(":", 1)
    ip = ipaddress.ip_address(host)
    # --private-ok: bench/fleet.sh runs shapers inside network namespaces it created,
    # on private addresses of a bridge that exists only there.
    if not (ip.is_loopback or (PRIVATE_OK and ip.is_private)):
        raise SystemExit(f"shaper: {hostport} is not a loopback address")
    return host, int(port)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:5001")
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--private-ok", action="store_true",
                    help="also allow private addresses (inside a benchmark's own network namespace)")
    ap.add_argument("--control", required=True, help="host:port of the counter port")
    ap.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay")
    ap.add_argument("--rate-mbit", type=float, default=0, help="0 = unlimited")
    a = ap.parse_args()
    global PRIVATE_OK
    PRIVATE_OK = a.private_ok
    d, rate = a.delay_ms / 1000, a.rate_mbit * 1e6
    up_link, down_link = Link(d, rate), Link(d, rate)
    uh, up = loopback(a.upstream)
    lh, lp = loopback(a.listen)
    ch, cp = loopback(a.control)
    conns = 0

    async def handle(cr, cw):
        nonlocal conns
        conns += 1
        t0 = time.monotonic()  # client "SYN"; request may arrive at t0+3d
        try:
            ur, uw = await asyncio.open_connection(uh, up)
        except OSError:
            cw.close()
            return
        # first client bytes wait out the emulated handshake (1 RTT + 1 way)
        await asyncio.gather(
            pump(cr, uw, up_link, t0 + 3 * d), pump(ur, cw, down_link, 0)
        )
        for w in (uw, cw):
            w.close()

    async def control(cr, cw):
        nonlocal conns
        line = (await cr.readline()).decode(errors="replace").strip()
        cw.write(f"down={down_link.bytes} up={up_link.bytes} conns={conns}\n".encode())
        if line == "reset":
            down_link.bytes = up_link.bytes = conns = 0
        await cw.drain()
        cw.close()

    srv = await asyncio.start_server(handle, lh, lp, reuse_address=True)
    ctl = await asyncio.start_server(control, ch, cp, reuse_address=True)
    print(
        f"shaper {a.listen} -> {a.upstream} delay={a.delay_ms}ms/way "
        f"rate={a.rate_mbit or 'inf'}Mbit control={a.control}",
        flush=True,
    )
    async with srv, ctl:
        await asyncio.gather(srv.serve_forever(), ctl.serve_forever())


if __name__ == "__main__":
    asyncio.run(main())
