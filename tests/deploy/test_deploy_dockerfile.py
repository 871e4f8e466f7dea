"""Static checks of deploy/docker/Dockerfile (no Docker engine here, and no hadolint): a parser for
the instructions we use, and the rules the image must keep."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tidm.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str
    value: str


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(p for p in pending if p)
        pending = []
        name, _, value = joined.partition(" ")
        out.append(Instruction(start, name.upper(), value.strip()))
    assert not pending, "a continuation line runs past the end of the file"
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for ins in instructions:
        if ins.name == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _args(instructions: list[Instruction]) -> dict[str, str]:
    found = {}
    for ins in instructions:
        if ins.name == "ARG" and "=" in ins.value:
            key, _, value = ins.value.partition("=")
            found[key] = value
    return found


def _base_images(instructions: list[Instruction]) -> list[str]:
    args = _args(instructions)
    images = []
    for ins in instructions:
        if ins.name == "FROM":
            image = ins.value.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


def test_multi_stage_on_pinned_slim_python(instructions: list[Instruction]) -> None:
    stages = _stages(instructions)
    assert len(stages) >= 2, "a builder stage and a final stage"
    for image in _base_images(instructions):
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and "@" not in name, f"{image}: pin a tag, never latest"
        assert re.fullmatch(r"python", name) and re.match(r"3\.11(\.\d+)?-slim", tag), image
    final_from = stages[-1][0].value
    assert " AS " not in final_from.upper() or not final_from.upper().endswith("BUILDER")


def test_dependencies_come_from_the_lock_with_hashes(instructions: list[Instruction]) -> None:
    builder = _stages(instructions)[0]
    runs = [i.value for i in builder if i.name == "RUN"]
    lock_installs = [r for r in runs if "runtime.lock" in r]
    assert lock_installs, "the builder installs requirements/runtime.lock"
    assert all("--require-hashes" in r for r in lock_installs)
    copies = [i.value for i in builder if i.name == "COPY"]
    assert any("requirements/runtime.lock" in c for c in copies)
    project = [r for r in runs if "pip install" in r and "runtime.lock" not in r]
    assert all("--no-deps" in r for r in project), "the project adds no unlocked dependencies"


def test_final_stage_is_non_root_and_read_only_friendly(instructions: list[Instruction]) -> None:
    final = _stages(instructions)[-1]
    users = [i.value for i in final if i.name == "USER"]
    assert users, "USER in the final stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000, "a numeric non-root uid (runAsNonRoot can check it)"
    assert not gid or (gid.isdigit() and int(gid) >= 1000)
    assert final.index(next(i for i in final if i.name == "USER")) > max(
        n for n, i in enumerate(final) if i.name == "RUN"
    ), "nothing runs as root after USER"
    env = " ".join(i.value for i in final if i.name == "ENV")
    for needed in ("NUMBA_CACHE_DIR=", "HOME=/tmp", "TMPDIR=/tmp", "PYTHONDONTWRITEBYTECODE=1"):
        assert needed in env, needed
    volumes = json.loads(next(i.value for i in final if i.name == "VOLUME"))
    numba_dir = re.search(r"NUMBA_CACHE_DIR=(\S+)", env)
    assert numba_dir and numba_dir.group(1) in volumes and "/tmp" in volumes
    copies_from_builder = [i.value for i in final if i.name == "COPY" and "--from=builder" in i.value]
    assert copies_from_builder, "the final stage takes the built environment only"


def test_entrypoint_is_tidm_and_the_default_command_runs(instructions: list[Instruction]) -> None:
    final = _stages(instructions)[-1]
    entrypoint = json.loads(next(i.value for i in final if i.name == "ENTRYPOINT"))
    assert entrypoint == ["tidm"], "exec form, so signals reach tidm (PID 1)"
    cmd = json.loads(next(i.value for i in final if i.name == "CMD"))
    assert CliRunner().invoke(cli, cmd).exit_code == 0


def test_build_context_is_filtered() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignore, "start from nothing"
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    copied = set()
    for ins in parse(DOCKERFILE.read_text(encoding="utf-8")):
        if ins.name == "COPY" and "--from=" not in ins.value:
            copied.update(shlex.split(ins.value)[:-1])
    for path in copied:
        assert path in allowed or f"{path}/" in allowed, f"COPY {path} is filtered out of the context"
        assert (ROOT / path).exists(), path


def test_parser_sees_through_continuations() -> None:
    parsed = parse("FROM a:1 AS b\n# c\nRUN x \\\n  # inner comment\n  && y\nUSER 1:1\n")
    assert [(i.name, i.value) for i in parsed] == [("FROM", "a:1 AS b"), ("RUN", "x && y"), ("USER", "1:1")]
