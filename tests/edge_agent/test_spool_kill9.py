"""kill -9 a process that writes, sends and acknowledges spool batches as fast as it can, at random
moments, 12 times: after each kill the folder opens cleanly, nothing is corrupt or torn, the unsent
batches decode byte for byte and continue one chain, and the chain head names the last of them.

This hits the group-file protocol (temp write, fsync, rename, folder fsync, progress lines) far more
densely than the agent drill, which kills a real agent among real services.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path

from tidm.edge_agent.spool import DiskSpool

KILLS = 12

_CHILD = r"""
import asyncio, random, sys
from pathlib import Path
from tidm.edge_agent.spool import ChainHead, DiskSpool
from tidm.ingest import AgentIdentity
from tidm.ingest.envelope import Provenance, new_batch_id, seal
from tidm.semantics import samples_table

identity = AgentIdentity.generate("gw")

def batch(first, prev):
    n = 5
    table = samples_table(
        ts_us=range(first, first + n), recv_ts_us=range(first, first + n), asset_id=["pump"] * n,
        signal=["s"] * n, value=[1.0] * n, value_text=[None] * n, quality=[0] * n, status_code=[0] * n,
        seq=range(first, first + n),
    )
    prov = Provenance(agent_id="gw", site="s", asset_id="pump", batch_id=new_batch_id(), sources=("src",),
                      seq_first=first, seq_last=first + n - 1, rows=n, created_us=1, prev_batch_hash=prev)
    return seal(table, prov, identity)

async def main():
    spool = DiskSpool(Path(sys.argv[1]), max_bytes=1 << 24).open()
    head = spool.head
    seq, prev = head.next_seq.get("src", 0), head.prev_batch_hash
    rng = random.Random()
    closing = asyncio.Event()
    batch(0, "")  # the first Arrow conversion imports pandas: not inside the measured window
    print("ready", flush=True)
    while True:
        group = []
        for _ in range(rng.randint(1, 3)):
            sealed = batch(seq, prev)
            prev, seq = sealed.sha256, seq + 5
            group.append((sealed, ChainHead(prev, {"src": seq}, {})))
        await spool.put(group)
        while spool.pending() > rng.randint(0, 6):
            item = await spool.next(closing=closing)
            await spool.ack(item)

asyncio.run(main())
"""


async def test_kill9_at_random_moments_never_corrupts_the_spool_or_breaks_its_chain(tmp_path: Path) -> None:
    rng = random.Random(4)
    path = tmp_path / "spool"
    last_head, last_seq, writes = "", 0, 0
    for _ in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == b"ready", child.stderr.read() if child.stderr else b""
            await asyncio.sleep(rng.uniform(0.05, 0.6))
        finally:
            child.kill()
            _, err = child.communicate(timeout=30)
        assert child.returncode == -9, err.decode(errors="replace")[-2000:]

        spool = DiskSpool(path, max_bytes=1 << 24).open()
        try:
            assert spool.stats.batches_corrupt == 0 and not list(path.glob("*.open"))
            head = spool.head
            pending = list(spool._queue)
            loaded = [await spool._load(e) for e in pending]  # each checks its SHA-256
            prev = loaded[0].provenance.prev_batch_hash if loaded else head.prev_batch_hash
            if loaded:
                assert [e.number for e in pending] == sorted(e.number for e in pending)
            for b in loaded:
                assert b.provenance.prev_batch_hash == prev, "unsent batches continue one chain"
                prev = b.sha256
            assert head.prev_batch_hash == prev, "the head names the last durable batch"
            if loaded:
                assert head.next_seq["src"] == loaded[-1].provenance.seq_last + 1
            # Never back: seqs only grow, and a head once durable is never lost.
            seq = head.next_seq.get("src", 0)
            assert seq >= last_seq and (head.prev_batch_hash or not last_head)
            writes += seq > last_seq
            last_head, last_seq = head.prev_batch_hash, seq
        finally:
            spool.close()
    assert writes >= KILLS // 2, "the kills landed while the child was writing"
    print(f"spool kill -9: {KILLS} kills, {writes} after progress, {last_seq // 5} batches made durable")
