"""What keeps the OPC UA edge path's memory down: freed heap handed back, no pandas pulled in.

Each check runs in a fresh interpreter, so the heap and `sys.modules` are the path's own.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from tidm.edge_agent.sources._memory import release_free_memory


def _run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True, timeout=120
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_release_free_memory_is_safe_to_call_repeatedly() -> None:
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert release_free_memory() is on_glibc
    assert release_free_memory() is on_glibc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_memory_returns_freed_heap_pages() -> None:
    result = _run(
        """
        import json
        from pathlib import Path
        from tidm.edge_agent.sources._memory import release_free_memory

        def rss_mb():
            return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

        # 1 KB blocks come from malloc's heap (not Python's small-object arenas); the last one,
        # kept, pins the top of the heap so glibc cannot shrink it on its own.
        blocks = [bytearray(1024) for _ in range(60_000)]
        pin = bytearray(1024)
        del blocks
        before = rss_mb()
        release_free_memory()
        print(json.dumps({"before": before, "after": rss_mb(), "pin": len(pin)}))
        """
    )
    assert float(result["before"]) - float(result["after"]) > 30  # ~60 MB were freed but resident


def test_collecting_and_batching_do_not_import_pandas() -> None:
    # pandas is not a runtime dependency, but pyarrow imports it (~30 MB) from `pa.array()` when it
    # is installed; the source -> batcher -> Arrow table path must not go through there.
    result = _run(
        """
        import json, sys
        from tidm.edge_agent.batcher import Batcher
        from tidm.edge_agent.sources.base import RawSample
        from tidm.edge_agent.sources.opcua import OpcUaSource  # noqa: F401

        batcher = Batcher(max_rows=1000, max_age_ms=1000)
        batcher.add("opc.tcp://plc:4840", [
            RawSample("press-1", "Temperature", 1, 2, 21.5, None, 0),
            RawSample("press-1", "Mode", 1, 2, None, "auto", 0x40000000),
            RawSample("press-1", "Pressure", 1, 2, None, None, 0x80000000),
        ])
        table = batcher.take("press-1").table
        print(json.dumps({"rows": table.num_rows, "pandas": "pandas" in sys.modules}))
        """
    )
    assert result == {"rows": 3, "pandas": False}
