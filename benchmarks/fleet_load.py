"""Fleet-scale load: N simulated units publish summaries and stats to mosquitto on loopback; one dashboard
subscriber receives them. Reports delivered messages/s, loss, duplicates, end-to-end latency and the broker's CPU.

    python benchmarks/fleet_load.py --units 1000 --seconds 60 --period 1 [--json benchmarks/results/fleet_load.json]

Each unit is a real paho-mqtt client with its own connection, client id and topics (``emotion/<id>/summary`` at
QoS 1 every ``--period`` seconds, ``emotion/<id>/stats`` every 6 periods), payloads shaped like the real ones
(~0.6 kB / ~1.2 kB). A real unit publishes a summary every 10 s; ``--period 1`` is ten times that pace, so 1,000
simulated units stand for 10,000 real ones. Units run in ``--workers`` processes, each driving its clients from
one selector loop (paho's external-loop API), so the broker, not Python threads, is what is measured; on a
2-core machine the generators and the subscriber share the cores with the broker, so figures are a floor.

Loss = messages the broker acknowledged (PUBACK) to a unit but the subscriber never got.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
VOICE_LABELS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_mosquitto(workdir: Path, port: int) -> subprocess.Popen:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = workdir / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n"
                    "max_queued_messages 100000\nmax_inflight_messages 100\nlog_dest stderr\nlog_type error\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=open(workdir / "mosquitto.log", "wb"),
                            preexec_fn=raise_fd_limit)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    raise SystemExit(f"mosquitto did not start: {(workdir / 'mosquitto.log').read_text()}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def stamped_id() -> str:
    """An event id (32 hex digits, as the schema asks) whose first half is the send time in ns: the payloads stay
    valid for their schemas (a dashboard reading this load drops nothing) and the subscriber still reads latency."""
    return f"{time.time_ns():016x}{uuid.uuid4().hex[:16]}"


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def sent_at(event_id: str) -> float:
    return int(event_id[:16], 16) / 1e9


def status(device: str) -> bytes:
    return json.dumps({"schema": "emotion.status/1", "state": "online", "device_id": device, "version": "0.1.0",
                       "at": iso(time.time()), "clock": "synchronized",
                       "purpose": "customer-experience", "profile": "kiosk", "camera": "ok", "models": []}).encode()


def summary(device: str, seq: int) -> bytes:
    rng = np.random.default_rng([seq, zlib.crc32(device.encode())])   # units differ, runs repeat
    dist = rng.dirichlet(np.ones(len(LABELS)))
    return json.dumps({
        "schema": "emotion.summary/1", "event_id": stamped_id(), "seq": seq, "device_id": device,
        "profile": "kiosk", "window_start": iso(time.time() - 10), "window_end": iso(time.time()),
        "faces": {"observations": 95, "distinct_faces": 2, "observed_seconds": 9.5,
                  "distribution": {k: round(float(v), 4) for k, v in zip(LABELS, dist)}},
        "voice": {"speech_seconds": 6.1, "distribution": {k: round(float(v), 4) for k, v in
                                                          zip(VOICE_LABELS, rng.dirichlet(np.ones(len(VOICE_LABELS))))}},
        "anger_index": round(float(dist[0]), 4), "suppressed": False, "suppressed_reason": None,
        "historical": False}).encode()


def stats(device: str, seq: int) -> bytes:
    latency = {"p50_ms": 8.1, "p95_ms": 14.2, "p99_ms": 19.7, "max_ms": 31.0}
    return json.dumps({
        "schema": "emotion.stats/1", "event_id": stamped_id(), "seq": seq, "device_id": device,
        "profile": "kiosk", "at": iso(time.time()), "interval_seconds": 60.0, "state": "online",
        "loop": {"rate_hz": 10, "fps": 10.0, "ticks": 600, "deadline_misses": 0, "skipped_slots": 0,
                 "ticks_total": 36000, "deadline_misses_total": 0, "end_to_end": latency},
        "stages": {s: latency for s in ("capture", "detect", "crop", "expression", "vad", "aggregate")},
        "camera": {"state": "ok", "frames_used": 36000, "frames_dropped": 12},
        "microphone": {"state": "ok", "lost_seconds": 0.0},
        "outbox": {"depth": 0, "bytes": 0, "oldest_age_s": None, "last_seq": seq, "dropped": 0, "expired": 0},
        "mqtt": {"protocol": "3.1.1", "connects": 1, "acked": seq, "rejected_commands": 0},
        "system": {"cpu_percent": 41.0, "rss_mb": 390.0, "mem_available_mb": 5200.0, "temperature_c": 51.5,
                   "load_1m": 1.2}, "historical": False}).encode()


# ------------------------------------------------------------------------------------------------ units
def run_units(first: int, count: int, host: str, port: int, period: float, seconds: float, start_at: float,
              out) -> None:
    """One worker process: ``count`` unit clients on one selector loop."""
    raise_fd_limit()
    sel = selectors.DefaultSelector()
    clients, acked, published = [], [0] * count, [0] * count
    for i in range(count):
        device = f"unit-{first + i:05d}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"load-{device}", protocol=mqtt.MQTTv311)
        client.max_inflight_messages_set(100)

        status_mid = []

        def on_publish(c, userdata, mid, reason, props, i=i, status_mid=status_mid):
            if mid not in status_mid:       # the retained status is not one of the counted events
                acked[i] += 1

        client.on_publish = on_publish
        client.will_set(f"emotion/{device}/status", json.dumps({"schema": "emotion.status/1", "state": "offline",
                        "device_id": device, "version": "0.1.0", "reason": "connection lost"}), 1, True)
        client.connect(host, port, keepalive=120)
        status_mid.append(client.publish(f"emotion/{device}/status", status(device), qos=1, retain=True).mid)
        sel.register(client.socket(), selectors.EVENT_READ, client)
        clients.append((device, client))
    rng = np.random.default_rng(first)
    due = start_at + rng.uniform(0, period, count)   # spread like real units, not in lock-step
    seq = np.zeros(count, dtype=int)
    end = start_at + seconds
    last_misc = 0.0
    while True:
        now = time.time()
        if now >= end and all(published[i] == acked[i] for i in range(count)):
            break
        if now >= end + 30:
            break
        for key, _ in sel.select(timeout=0.01):
            key.data.loop_read()
        if now < end:
            for i in np.flatnonzero(due <= now):
                device, client = clients[i]
                seq[i] += 1
                n = int(seq[i])
                kind, body = ("stats", stats(device, n)) if n % 7 == 0 else ("summary", summary(device, n))
                client.publish(f"emotion/{device}/{kind}", body, qos=1)
                published[i] += 1
                due[i] += period if kind == "summary" else 0.0
        for _, client in clients:
            if client.want_write():
                client.loop_write()
        if now - last_misc > 1:
            last_misc = now
            for _, client in clients:
                client.loop_misc()
    for _, client in clients:
        client.disconnect()
    out.put({"published": sum(published), "acked": sum(acked)})


# ------------------------------------------------------------------------------------------------ dashboard
def run_subscriber(host: str, port: int, ready, stop, out) -> None:
    received: dict[tuple[str, int], int] = {}
    latencies = []
    by_second: dict[int, int] = {}

    def on_message(c, userdata, message):
        now = time.time()
        data = json.loads(message.payload)
        key = (data["device_id"], data["seq"])
        received[key] = received.get(key, 0) + 1
        latencies.append(now - sent_at(data["event_id"]))
        by_second[int(now)] = by_second.get(int(now), 0) + 1

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="load-dashboard", protocol=mqtt.MQTTv311)
    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: (c.subscribe("emotion/+/summary", 1), c.subscribe("emotion/+/stats", 1))
    client.on_subscribe = lambda *a: ready.set()
    client.connect(host, port, keepalive=120)
    client.loop_start()
    stop.wait()
    time.sleep(2)   # the last messages in flight
    client.loop_stop()
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    out.put({"unique": len(received), "duplicates": sum(v - 1 for v in received.values()),
             "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2),
                            "p95": round(float(np.percentile(lat, 95)), 2),
                            "p99": round(float(np.percentile(lat, 99)), 2), "max": round(float(lat.max()), 2)},
             "per_second": by_second})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--period", type=float, default=1.0, help="seconds between a unit's summaries (real: 10)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--broker", default=None,
                        help="mqtt://host:port of a running broker to load (e.g. one a dashboard reads) instead of "
                             "a mosquitto of its own; the broker's CPU is then not measured")
    args = parser.parse_args()

    raise_fd_limit()
    if args.broker:
        from urllib.parse import urlsplit

        url = urlsplit(args.broker)
        if url.scheme != "mqtt" or not url.hostname:
            raise SystemExit(f"--broker {args.broker}: use mqtt://host:port")
        host, port, broker = url.hostname, url.port or 1883, None
    else:
        workdir = Path(tempfile.mkdtemp(prefix="fleet-load-"))
        host, port = "127.0.0.1", free_port()
        broker = start_mosquitto(workdir, port)
    ctx = mp.get_context("fork")
    out, sub_out = ctx.Queue(), ctx.Queue()
    ready, stop = ctx.Event(), ctx.Event()
    subscriber = ctx.Process(target=run_subscriber, args=(host, port, ready, stop, sub_out))
    subscriber.start()
    if not ready.wait(10):
        raise SystemExit("dashboard subscriber could not subscribe")
    print(f"fleet load: {args.units} units x 1 summary / {args.period:g} s (+ stats every 6th) for {args.seconds:g} s "
          f"on {'the broker' if args.broker else 'mosquitto'} {host}:{port}, {args.workers} generator processes", file=sys.stderr, flush=True)
    start_at = time.time() + 3 + args.units / 400    # time for every unit to connect first
    per = [args.units // args.workers + (i < args.units % args.workers) for i in range(args.workers)]
    firsts = np.cumsum([0] + per[:-1])
    workers = [ctx.Process(target=run_units, args=(int(f), n, host, port, args.period, args.seconds, start_at, out))
               for f, n in zip(firsts, per)]
    for w in workers:
        w.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu0, wall0 = (cpu_seconds(broker.pid) if broker else 0.0), time.time()
    progress_at = wall0
    while time.time() < start_at + args.seconds:
        time.sleep(0.5)
        if time.time() - progress_at >= 10:
            progress_at = time.time()
            print(f"  {progress_at - wall0:.0f}/{args.seconds:g} s"
                  + (f", broker RSS {rss_mb(broker.pid):.0f} MB" if broker else ""),
                  file=sys.stderr, flush=True)
    cpu1, wall1 = (cpu_seconds(broker.pid) if broker else 0.0), time.time()
    results = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(30)
    stop.set()
    sub = sub_out.get(timeout=60)
    subscriber.join(10)
    broker_rss = rss_mb(broker.pid) if broker else None
    if broker:
        broker.terminate()
        broker.wait(10)

    published = sum(r["published"] for r in results)
    acked = sum(r["acked"] for r in results)
    steady = [n for s, n in sorted(sub.pop("per_second").items())][2:-3] or [0]
    report = {
        "units": args.units, "seconds": args.seconds, "period_s": args.period,
        "equivalent_real_units": round(args.units * 10 / args.period),
        "published": published, "acked_by_broker": acked, "received_unique": sub["unique"],
        "lost": acked - sub["unique"], "loss_percent": round(100 * (acked - sub["unique"]) / max(1, acked), 4),
        "duplicates": sub["duplicates"],
        "delivered_per_s": round(sub["unique"] / args.seconds, 1),
        "delivered_per_s_steady_median": float(np.median(steady)),
        "latency_ms": sub["latency_ms"],
        "broker_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1) if broker else None,
        "broker_rss_mb": round(broker_rss, 1) if broker else None,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": "python benchmarks/fleet_load.py " + " ".join(sys.argv[1:]),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
        args.json.with_suffix(".md").write_text(markdown(report))
        print(f"wrote {args.json} and {args.json.with_suffix('.md')}", file=sys.stderr)


def markdown(r: dict) -> str:
    lat = r["latency_ms"]
    return (f"# Fleet load on one mosquitto (loopback)\n\n`{r['command']}` on {r['machine']}\n\n"
            f"| units | summary every | ≈ real units | published | acked | received | lost | duplicates | "
            f"delivered/s | latency p50 / p99 / max ms | broker CPU (% of a core) | broker RSS |\n"
            f"|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {r['units']} | {r['period_s']:g} s | {r['equivalent_real_units']} | {r['published']} | "
            f"{r['acked_by_broker']} | {r['received_unique']} | {r['lost']} ({r['loss_percent']}%) | "
            f"{r['duplicates']} | {r['delivered_per_s']} | {lat['p50']} / {lat['p99']} / {lat['max']} | "
            f"{r['broker_cpu_percent_of_one_core']} | {r['broker_rss_mb']} MB |\n\n"
            "Generators, subscriber and broker share this machine's cores: the broker's own CPU share is the figure "
            "that carries over to a dedicated broker host. See docs/fleet-scale.md for going beyond one broker.\n")


if __name__ == "__main__":
    main()
