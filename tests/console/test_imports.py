"""The console's place in the part rules: it imports storage, evidence and semantics (and the root
errors); only the CLI imports it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tidm"
ALLOWED = ("tidm.console", "tidm.storage", "tidm.evidence", "tidm.semantics", "tidm.errors")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n == "tidm" or n.startswith("tidm.")}


def test_the_console_imports_only_storage_evidence_and_semantics() -> None:
    files = sorted((SRC / "console").rglob("*.py"))
    assert files
    for path in files:
        bad = sorted(n for n in _imports(path) if not n.startswith(ALLOWED))
        assert not bad, f"{path.relative_to(SRC)} imports {bad}"


def test_nothing_but_the_cli_imports_the_console() -> None:
    for path in sorted(SRC.rglob("*.py")):
        part = path.relative_to(SRC).parts[0]
        if part in ("cli", "console"):
            continue
        assert not any(n.startswith("tidm.console") for n in _imports(path)), path.relative_to(SRC)
