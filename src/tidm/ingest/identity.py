"""Ed25519 identities of agents: key files and the registry of trusted agent public keys."""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tidm.ingest.errors import KeyFileError

__all__ = [
    "AgentIdentity",
    "TrustedAgents",
    "public_key_b64",
    "public_key_from_b64",
]


def public_key_b64(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_key_from_b64(text: str, *, where: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        msg = f"{where}: not a base64 Ed25519 public key"
        raise KeyFileError(msg) from exc


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class AgentIdentity:
    """An agent's id and Ed25519 signing key."""

    agent_id: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, agent_id: str) -> AgentIdentity:
        return cls(agent_id, Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def save(self, path: Path) -> None:
        """Write the private key as PKCS#8 PEM, mode 0600, atomically."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(path, pem)

    @classmethod
    def load(cls, agent_id: str, path: Path) -> AgentIdentity:
        try:
            data = path.read_bytes()
        except OSError as exc:
            msg = f"cannot read agent key file {path}: {exc.strerror}"
            raise KeyFileError(msg) from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except ValueError as exc:
            msg = f"{path}: not a PEM private key"
            raise KeyFileError(msg) from exc
        if not isinstance(key, Ed25519PrivateKey):
            msg = f"{path}: not an Ed25519 private key"
            raise KeyFileError(msg)
        return cls(agent_id, key)


class TrustedAgents:
    """Registry of agent ids and the public keys ingest trusts for them.

    The file form is JSON: {"agents": {"<agent id>": "<base64 raw public key>", ...}}.
    """

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None, *, path: Path | None = None):
        self._keys: dict[str, Ed25519PublicKey] = dict(keys or {})
        self._path = path
        self._mtime_ns = -1

    @classmethod
    def from_file(cls, path: Path) -> TrustedAgents:
        registry = cls(path=path)
        registry.reload()
        return registry

    def add(self, agent_id: str, key: Ed25519PublicKey) -> None:
        self._keys[agent_id] = key

    def get(self, agent_id: str) -> Ed25519PublicKey | None:
        self.reload_if_changed()
        return self._keys.get(agent_id)

    def verify(self, agent_id: str, signature: bytes, data: bytes) -> bool | None:
        """True if valid, False if the signature fails, None if the agent is unknown."""
        key = self.get(agent_id)
        if key is None:
            return None
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def reload_if_changed(self) -> None:
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime_ns
        except OSError:
            return
        if mtime != self._mtime_ns:
            self.reload()

    def reload(self) -> None:
        if self._path is None:
            return
        where = str(self._path)
        try:
            stat = self._path.stat()
            doc = json.loads(self._path.read_text(encoding="utf-8"))
        except OSError as exc:
            msg = f"cannot read trusted agents file {where}: {exc.strerror}"
            raise KeyFileError(msg) from exc
        except json.JSONDecodeError as exc:
            msg = f"{where}: line {exc.lineno}: not JSON ({exc.msg})"
            raise KeyFileError(msg) from exc
        agents = doc.get("agents") if isinstance(doc, dict) else None
        if not isinstance(agents, dict):
            msg = f"{where}: expected an object with an 'agents' map"
            raise KeyFileError(msg)
        keys = {}
        for agent_id, text in agents.items():
            if not isinstance(text, str):
                msg = f"{where}: agents.{agent_id}: expected a base64 string"
                raise KeyFileError(msg)
            keys[str(agent_id)] = public_key_from_b64(text, where=f"{where}: agents.{agent_id}")
        self._keys = keys
        self._mtime_ns = stat.st_mtime_ns

    def save(self, path: Path) -> None:
        doc = {"agents": {a: public_key_b64(k) for a, k in sorted(self._keys.items())}}
        data = json.dumps(doc, indent=2).encode("utf-8")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
