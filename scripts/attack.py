#!/usr/bin/env python3
"""Attacks a `gallop ingest` process the way a hostile client would and prints its peak
memory (VmHWM) under each attack, plus whether /health kept answering.

    python3 scripts/attack.py target/release/gallop [--nats nats://127.0.0.1:4222]

Each attack gets a fresh gateway (its own stream and salt bucket, memory storage) so the
peaks are separate: slowloris heads, slow bodies one byte short of the limit, an idle
connection flood, 200 KiB User-Agents and many distinct 1 KiB User-Agents. Numbers for
docs/benchmarks.md and the issue notes; not a test (the bounds are asserted in
ingest/tests/it/hardening.rs).
"""

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import threading
import time

FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"
EVENT = b'{"n":"pageview","u":"https://example.com/","d":"example.com"}'


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def start(binary, nats):
    tag = f"{random.getrandbits(48):012x}"
    env = dict(os.environ)
    env.pop("GALLOP_CONFIG", None)
    env.update({
        "RUST_LOG": "info",
        "GALLOP_NATS__URL": nats,
        "GALLOP_NATS__STREAM": f"GALLOP_ATTACK_{tag}",
        "GALLOP_NATS__SUBJECT_PREFIX": f"gallop-attack-{tag}",
        "GALLOP_NATS__SALT_BUCKET": f"gallop_attack_{tag}",
        "GALLOP_NATS__STORAGE": "memory",
        "GALLOP_INGEST__LISTEN": "127.0.0.1:0",
    })
    child = subprocess.Popen([binary, "--log-json", "ingest"], env=env, stderr=subprocess.PIPE, text=True)
    for line in child.stderr:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("fields", {}).get("message") == "gateway listening":
            host, port = entry["fields"]["address"].rsplit(":", 1)
            # Keep draining the log so the gateway never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in child.stderr], daemon=True).start()
            return child, host, int(port)
    raise SystemExit("gateway did not start")


async def request(host, port, head, body=b"", timeout=5.0):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.write(head + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(4096), timeout)
    writer.close()
    return data


async def health(host, port):
    started = time.monotonic()
    try:
        data = await request(host, port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=3)
        ok = data.startswith(b"HTTP/1.1 200")
    except (OSError, asyncio.TimeoutError):
        ok = False
    return ok, time.monotonic() - started


async def probe_during(host, port, seconds):
    """Probes /health every 250 ms for `seconds`; returns (answered, probes, worst latency)."""
    answered, probes, worst = 0, 0, 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ok, took = await health(host, port)
        probes += 1
        answered += ok
        worst = max(worst, took)
        await asyncio.sleep(0.25)
    return answered, probes, worst


async def open_many(host, port, n):
    conns = []
    for _ in range(n):
        try:
            conns.append(await asyncio.wait_for(asyncio.open_connection(host, port), 2))
        except (OSError, asyncio.TimeoutError):
            pass
    return conns


async def slowloris(host, port):
    conns = await open_many(host, port, 2000)
    for _, w in conns:
        w.write(b"POST /api/event HTTP/1.1\r\nHost: x\r\n")
    async def drip():
        for i in range(40):
            for _, w in conns:
                try:
                    w.write(f"X-{i}: y\r\n".encode())
                except (OSError, RuntimeError):
                    pass
            await asyncio.sleep(0.5)
    result = await asyncio.gather(drip(), probe_during(host, port, 20))
    return len(conns), result[1]


async def slow_bodies(host, port):
    limit = 1 << 20
    head = (f"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {limit}\r\n\r\n").encode()
    conns = await open_many(host, port, 500)
    chunk = b" " * (limit - 1)
    async def fill(w):
        try:
            w.write(head + chunk)
            await asyncio.wait_for(w.drain(), 20)
        except (OSError, RuntimeError, asyncio.TimeoutError):
            pass
    fills = asyncio.gather(*(fill(w) for _, w in conns))
    result = await asyncio.gather(fills, probe_during(host, port, 20))
    return len(conns), result[1]


async def idle_flood(host, port):
    # 19 500: the attacker itself needs descriptors left for the probes (hard limit 20 000 here).
    conns = await open_many(host, port, 19500)
    result = await probe_during(host, port, 15)
    return len(conns), result


async def user_agents(host, port, count, filler, batch):
    """`count` requests, `batch` at a time, each with a distinct User-Agent padded by
    `filler` bytes; returns the statuses counted and a last /health probe."""
    async def one(i):
        ua = f"{FIREFOX} {i} " + "x" * filler
        head = (f"POST /api/event HTTP/1.1\r\nHost: x\r\nUser-Agent: {ua}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(EVENT)}\r\nConnection: close\r\n\r\n").encode()
        try:
            return await request(host, port, head, EVENT, timeout=10)
        except (OSError, asyncio.TimeoutError):
            return b""
    statuses = {}
    for start_at in range(0, count, batch):
        for reply in await asyncio.gather(*(one(i) for i in range(start_at, start_at + batch))):
            code = reply[9:12].decode() if reply.startswith(b"HTTP/1.1") else "none"
            statuses[code] = statuses.get(code, 0) + 1
    return statuses, await probe_during(host, port, 1)


async def huge_user_agents(host, port):
    return await user_agents(host, port, 3000, 200 * 1024, 100)


async def distinct_user_agents(host, port):
    return await user_agents(host, port, 20000, 1000, 200)


ATTACKS = [
    ("slowloris: 2000 connections, one header line per 0.5 s", slowloris),
    ("slow bodies: 500 connections, 1 MiB - 1 byte each, held", slow_bodies),
    ("idle flood: 19500 idle connections", idle_flood),
    ("200 KiB User-Agents: 3000 requests", huge_user_agents),
    ("distinct 1 KiB User-Agents: 20000 requests", distinct_user_agents),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"attacker fd limit {hard}")
    for name, attack in ATTACKS:
        child, host, port = start(args.binary, args.nats)
        try:
            asyncio.run(request(host, port, b"POST /api/event HTTP/1.1\r\nHost: x\r\nUser-Agent: " + FIREFOX.encode()
                                + b"\r\nContent-Type: text/plain\r\nContent-Length: " + str(len(EVENT)).encode()
                                + b"\r\nConnection: close\r\n\r\n", EVENT))
            base = status_kib(child.pid, "VmRSS")
            outcome = asyncio.run(attack(host, port))
            peak = status_kib(child.pid, "VmHWM")
            after = status_kib(child.pid, "VmRSS")
            print(f"{name}\n  RSS before {base / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
                  f"after {after / 1024:.1f} MiB; outcome {outcome}")
        finally:
            child.terminate()
            child.wait(timeout=30)


if __name__ == "__main__":
    main()
