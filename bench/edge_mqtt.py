"""MQTT path of the edge agent: samples/s per CPU core and RSS, against a bare paho receiver.

    python bench/edge_mqtt.py [--single N] [--batches N] [--batch-size N]

Starts the dev Mosquitto (`deploy/dev/services.py up --only mqtt`, idempotent). Each measured
receiver runs in its own process (clean RSS), and the publisher in another one, so only the
receiver's CPU is counted: samples per CPU-second of the receiver process (all its threads,
`time.process_time`), i.e. samples/s per core. Receivers:

- baseline: a minimal paho client (its network thread) that only counts messages;
- source: MqttSource (paho thread -> hand-off -> decode JSON + JSONPath -> RawSample -> emit);
- source+batcher: the same, emitting into the agent's Batcher (columns per asset), as in `tidm agent run`.

Payloads: single-sample JSON ({"ts": ms, "v": x}) and batched JSON (an array of `--batch-size`
records {"ts", "s", "v"}). All QoS 1 (the production setting: acknowledged after use).
Target: >= 200,000 samples/s per core on batched JSON through the source.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_BATCHED = 200_000


def _broker() -> tuple[str, int]:
    subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "dev" / "services.py"), "up", "--only", "mqtt"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    state = json.loads((ROOT / ".dev-services" / "state.json").read_text())
    return str(state["mqtt"]["host"]), int(state["mqtt"]["port"])


def _payloads(kind: str, count: int, batch_size: int) -> list[bytes]:
    base = 1_767_000_000_000
    if kind == "single":
        return [json.dumps({"ts": base + i, "v": i * 0.5}).encode() for i in range(count)]
    return [
        json.dumps(
            [{"ts": base + i * batch_size + k, "s": f"sig{k % 10}", "v": k * 0.25} for k in range(batch_size)]
        ).encode()
        for i in range(count)
    ]


# ------------------------------------------------------------------------------ publisher process


def publish(host: str, port: int, topic: str, kind: str, count: int, batch_size: int) -> None:
    import paho.mqtt.client as mqtt

    payloads = _payloads(kind, count, batch_size)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port, 60)
    client.loop_start()
    infos = [client.publish(topic, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


# ------------------------------------------------------------------------------- receiver process


class _Meter:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.cpu0 = 0.0
        self.wall0 = 0.0
        self.cpu = 0.0
        self.wall = 0.0

    def add(self, n: int) -> bool:
        if self.count == 0:
            self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        self.count += n
        if self.count >= self.expected:
            self.cpu = time.process_time() - self.cpu0
            self.wall = time.perf_counter() - self.wall0
            return True
        return False


def _report(meter: _Meter, per_message: int) -> None:
    # The first message starts the clocks: discount it so per-core rates are not flattered.
    samples = meter.count - per_message
    print(
        json.dumps(
            {
                "samples": samples,
                "cpu_s": meter.cpu,
                "wall_s": meter.wall,
                "per_core": samples / meter.cpu if meter.cpu else float("inf"),
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        ),
        flush=True,
    )


def receive_baseline(host: str, port: int, topic: str, expected: int, per_message: int) -> None:
    import threading

    import paho.mqtt.client as mqtt

    meter = _Meter(expected)
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if meter.add(per_message):
            done.set()

    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-base-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect(host, port, 60)
    client.subscribe(topic, qos=1)
    client.loop_start()
    subscribed.wait(30)
    print("READY", flush=True)
    done.wait(600)
    client.disconnect()
    client.loop_stop()
    _report(meter, per_message)


def receive_source(host: str, port: int, topic: str, expected: int, per_message: int, batcher: bool) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import tempfile

    from tidm.edge_agent.sources.base import RawSample
    from tidm.edge_agent.sources.decoders import JsonDecoderSettings, JsonSignal
    from tidm.edge_agent.sources.mqtt import MqttSource, MqttSourceSettings, MqttSubscription

    if per_message == 1:
        decoder = JsonDecoderSettings(
            asset_topic_level=-1,
            timestamp_path="$.ts",
            timestamp_unit="ms",
            signals=[JsonSignal(signal="v", path="$.v")],
        )
    else:
        decoder = JsonDecoderSettings(
            asset_topic_level=-1,
            timestamp_path="$.ts",
            timestamp_unit="ms",
            signal_path="$.s",
            value_path="$.v",
        )
    meter = _Meter(expected)
    b: Any = None
    if batcher:
        from tidm.edge_agent.batcher import Batcher

        b = Batcher(max_rows=10_000, max_age_ms=1_000)

    async def main() -> None:
        stop = asyncio.Event()
        with tempfile.TemporaryDirectory(prefix="tidm-bench-") as tmp:
            source = MqttSource(
                MqttSourceSettings(
                    host=host,
                    port=port,
                    client_id=f"bench-src-{os.getpid()}",
                    clean_start=True,
                    quarantine_dir=Path(tmp),
                    subscriptions=[MqttSubscription(topic=topic, qos=1, decoder=decoder)],
                )
            )

            def emit(name: str, samples: list[RawSample]) -> None:
                if batcher:
                    for asset in b.add(name, samples):
                        b.take(asset)  # builds the Arrow table, as the agent does when a batch is full
                if meter.add(len(samples)):
                    stop.set()

            task = asyncio.create_task(source.run(emit, stop))  # type: ignore[arg-type]
            while not source.connected.is_set():
                await asyncio.sleep(0.01)
            print("READY", flush=True)
            await asyncio.wait_for(task, 600)
            assert source.stats.quarantine.payloads == 0, source.stats

    asyncio.run(main())
    _report(meter, per_message)


# ------------------------------------------------------------------------------------ orchestration


def _run(
    role: str, host: str, port: int, kind: str, count: int, batch_size: int, tag: str
) -> dict[str, float]:
    per_message = 1 if kind == "single" else batch_size
    topic = f"bench/{tag}/{role.replace('+', '-')}/{kind}/asset-1"
    receiver = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--worker",
            role,
            "--host",
            host,
            "--port",
            str(port),
            "--topic",
            topic,
            "--expected",
            str(count * per_message),
            "--per-message",
            str(per_message),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None
    try:
        line = receiver.stdout.readline()
        if line.strip() != "READY":
            raise SystemExit(f"{role} receiver did not start: {line!r}")
        pub = subprocess.run(
            [
                sys.executable,
                __file__,
                "--publish",
                kind,
                "--host",
                host,
                "--port",
                str(port),
                "--topic",
                topic,
                "--count",
                str(count),
                "--batch-size",
                str(batch_size),
            ],
            check=True,
            timeout=900,
        )
        assert pub.returncode == 0
        out, _ = receiver.communicate(timeout=900)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        receiver.stdout.close()
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--single", type=int, default=40_000, help="single-sample messages")
    parser.add_argument("--batches", type=int, default=4_000, help="batched messages")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--worker", choices=["baseline", "source", "source+batcher"])
    parser.add_argument("--publish", choices=["single", "batched"])
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--topic")
    parser.add_argument("--expected", type=int)
    parser.add_argument("--per-message", type=int)
    parser.add_argument("--count", type=int)
    args = parser.parse_args()
    if args.publish:
        publish(args.host, args.port, args.topic, args.publish, args.count, args.batch_size)
        return
    if args.worker == "baseline":
        receive_baseline(args.host, args.port, args.topic, args.expected, args.per_message)
        return
    if args.worker:
        receive_source(
            args.host, args.port, args.topic, args.expected, args.per_message, args.worker != "source"
        )
        return

    host, port = _broker()
    tag = f"{os.getpid()}-{int(time.time())}"
    print(f"MQTT path, Mosquitto at {host}:{port}; QoS 1; per-core = samples / receiver CPU seconds")
    header = f"{'payload':<22}{'receiver':<16}{'samples':>10}{'samples/s/core':>16}{'vs baseline':>13}"
    print(f"{header}{'wall s':>8}{'RSS MB':>8}")
    results: dict[tuple[str, str], dict[str, float]] = {}
    for kind, count in (("single", args.single), ("batched", args.batches)):
        label = "single-sample JSON" if kind == "single" else f"batched JSON x{args.batch_size}"
        for role in ("baseline", "source", "source+batcher"):
            r = results[(kind, role)] = _run(role, host, port, kind, count, args.batch_size, tag)
            base = results[(kind, "baseline")]["per_core"]
            print(
                f"{label:<22}{role:<16}{int(r['samples']):>10}{r['per_core']:>16,.0f}"
                f"{r['per_core'] / base:>12.2f}x{r['wall_s']:>8.2f}{r['rss_mb']:>8.1f}",
                flush=True,
            )
    batched = results[("batched", "source")]["per_core"]
    verdict = "MET" if batched >= TARGET_BATCHED else "NOT MET"
    target = f"target >= {TARGET_BATCHED:,} samples/s per core on batched JSON (source)"
    print(f"{target}: {batched:,.0f} -> {verdict}")
    with_batcher = results[("batched", "source+batcher")]["per_core"]
    print(f"  including the agent's Batcher: {with_batcher:,.0f} samples/s per core")


if __name__ == "__main__":
    main()
