"""The wire envelope: one Arrow IPC stream per batch, provenance in its schema metadata, and the
SHA-256 of the bytes plus the agent's Ed25519 signature over it in the message headers.

Provenance sits inside the bytes, so the content hash covers it; the headers only carry what a
receiver needs to check those bytes before trusting anything in them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import pyarrow as pa

from tidm.ingest.errors import EnvelopeError
from tidm.ingest.identity import AgentIdentity, TrustedAgents
from tidm.ingest.transports.base import Message
from tidm.semantics import SCHEMA_VERSION, SchemaError, check_samples

__all__ = [
    "HEADER_AGENT",
    "HEADER_SCHEMA",
    "HEADER_SHA256",
    "HEADER_SIGNATURE",
    "PROVENANCE_KEY",
    "Provenance",
    "SealedBatch",
    "VerifiedBatch",
    "new_batch_id",
    "open_envelope",
    "seal",
]

PROVENANCE_KEY = b"tidm.provenance"
HEADER_SHA256 = "tidm-sha256"
HEADER_SIGNATURE = "tidm-sig"
HEADER_AGENT = "tidm-agent"
HEADER_SCHEMA = "tidm-schema"

# Columns are compressed inline: a batch holds a few thousand rows at most, and handing each column to
# pyarrow's thread pool cost more CPU than compressing it (about a third of the agent's CPU at
# 100-row batches), on gateways that have a core or two.
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd", use_threads=False)


def new_batch_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so batch ids sort by creation time."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


@dataclass(frozen=True)
class Provenance:
    """Where a batch came from and under which rules it was made."""

    agent_id: str
    site: str
    asset_id: str
    batch_id: str
    sources: tuple[str, ...]
    seq_first: int
    seq_last: int
    rows: int
    created_us: int
    prev_batch_hash: str = ""
    policy_id: str = ""
    policy_hash: str = ""
    key_ids: tuple[str, ...] = ()
    schema_version: str = SCHEMA_VERSION
    # Optional, so provenance written before they existed still decodes.
    policy_version: str = ""
    classification: str = ""  # highest GB/T 43697-2024 level of the batch's signals ("" = unclassified)
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        # The fields as they are (tuples encode as arrays): `asdict` deep-copies every value first,
        # which cost more than the encoding itself, once per batch.
        doc = {name: getattr(self, name) for name in _PROVENANCE_FIELDS}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> Provenance:
        try:
            doc = json.loads(data)
            doc["sources"] = tuple(doc["sources"])
            doc["key_ids"] = tuple(doc.get("key_ids", ()))
            return cls(**doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise EnvelopeError(
                reason="bad-provenance", detail=f"provenance metadata is malformed ({exc})", where=where
            ) from exc


_PROVENANCE_FIELDS = tuple(f.name for f in fields(Provenance))


@dataclass(frozen=True)
class SealedBatch:
    """A batch ready for the transport."""

    value: bytes
    sha256: str
    signature: bytes
    provenance: Provenance
    # `provenance.to_json()` as sealed into the batch (reused by the spool's group header), or b"".
    provenance_json: bytes = field(default=b"", repr=False, compare=False)

    @property
    def key(self) -> bytes:
        return self.provenance.asset_id.encode("utf-8")

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (HEADER_SHA256, self.sha256.encode("ascii")),
            (HEADER_SIGNATURE, self.signature),
            (HEADER_AGENT, self.provenance.agent_id.encode("utf-8")),
            (HEADER_SCHEMA, self.provenance.schema_version.encode("ascii")),
        ]


@dataclass(frozen=True)
class VerifiedBatch:
    """A received batch whose hash and agent signature checked out."""

    table: pa.Table
    provenance: Provenance
    sha256: str
    message: Message


def seal(table: pa.Table, provenance: Provenance, identity: AgentIdentity) -> SealedBatch:
    """Serialize `table` with `provenance` in its schema metadata, hash it and sign the hash."""
    if identity.agent_id != provenance.agent_id:
        msg = f"identity {identity.agent_id!r} cannot seal a batch of agent {provenance.agent_id!r}"
        raise ValueError(msg)
    meta = dict(table.schema.metadata or {})
    provenance_json = meta[PROVENANCE_KEY] = provenance.to_json()
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    value = sink.getvalue().to_pybytes()
    digest = hashlib.sha256(value).digest()
    return SealedBatch(value, digest.hex(), identity.sign(digest), provenance, provenance_json)


def _required(message: Message, name: str) -> bytes:
    value = message.header(name)
    if value is None:
        raise EnvelopeError(
            reason="missing-header", detail=f"header '{name}' is missing", where=message.where()
        )
    return value


def open_envelope(message: Message, trusted: TrustedAgents) -> VerifiedBatch:
    """Check a message's hash and signature, then decode it. Raises EnvelopeError naming where."""
    where = message.where()
    claimed = _required(message, HEADER_SHA256).decode("ascii", "replace")
    signature = _required(message, HEADER_SIGNATURE)
    agent_id = _required(message, HEADER_AGENT).decode("utf-8", "replace")
    digest = hashlib.sha256(message.value).digest()
    if digest.hex() != claimed:
        raise EnvelopeError(
            reason="hash-mismatch", detail=f"content SHA-256 {digest.hex()} != header {claimed}", where=where
        )
    verdict = trusted.verify(agent_id, signature, digest)
    if verdict is None:
        raise EnvelopeError(
            reason="unknown-agent", detail=f"agent '{agent_id}' is not in the trusted agents", where=where
        )
    if not verdict:
        raise EnvelopeError(
            reason="bad-signature", detail=f"signature of agent '{agent_id}' does not verify", where=where
        )
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(message.value))
        table = reader.read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise EnvelopeError(
            reason="malformed-ipc", detail=f"not a readable Arrow IPC stream ({exc})", where=where
        ) from exc
    try:
        check_samples(table, where=where)
    except SchemaError as exc:
        raise EnvelopeError(reason="wrong-schema", detail=str(exc), where=where) from exc
    raw = (table.schema.metadata or {}).get(PROVENANCE_KEY)
    if raw is None:
        raise EnvelopeError(reason="bad-provenance", detail="schema metadata has no provenance", where=where)
    provenance = Provenance.from_json(raw, where=where)
    if provenance.agent_id != agent_id:
        raise EnvelopeError(
            reason="bad-provenance",
            detail=f"header agent '{agent_id}' != provenance agent '{provenance.agent_id}'",
            where=where,
        )
    if provenance.rows != table.num_rows:
        raise EnvelopeError(
            reason="bad-provenance",
            detail=f"provenance says {provenance.rows} rows, batch has {table.num_rows}",
            where=where,
        )
    return VerifiedBatch(table, provenance, claimed, message)


def sources_of(batches: Sequence[VerifiedBatch]) -> list[str]:
    """The content hashes of `batches`, in order (the `inputs` of a derived object)."""
    return [b.sha256 for b in batches]
