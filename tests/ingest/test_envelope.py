import hashlib

import pyarrow as pa
import pytest

from tidm.ingest import (
    AgentIdentity,
    EnvelopeError,
    Provenance,
    TrustedAgents,
    new_batch_id,
    open_envelope,
    seal,
)
from tidm.ingest.envelope import HEADER_AGENT, HEADER_SHA256, HEADER_SIGNATURE
from tidm.ingest.transports.base import Message
from tidm.semantics import samples_table


def _table() -> pa.Table:
    return samples_table(
        ts_us=[1, 2],
        recv_ts_us=[3, 4],
        asset_id=["pump"] * 2,
        signal=["p", "t"],
        value=[1.0, 2.0],
        value_text=[None, None],
        quality=[0, 0],
        status_code=[0, 0],
        seq=[0, 1],
    )


def _provenance(agent: str = "agent-a", rows: int = 2) -> Provenance:
    return Provenance(
        agent_id=agent,
        site="s",
        asset_id="pump",
        batch_id=new_batch_id(),
        sources=("opc.tcp://x",),
        seq_first=0,
        seq_last=1,
        rows=rows,
        created_us=5,
    )


def _message(value: bytes, headers: list[tuple[str, bytes]]) -> Message:
    return Message("tidm.samples", 3, 42, b"pump", value, tuple(headers), 0)


@pytest.fixture
def identity() -> AgentIdentity:
    return AgentIdentity.generate("agent-a")


@pytest.fixture
def trusted(identity: AgentIdentity) -> TrustedAgents:
    return TrustedAgents({identity.agent_id: identity.public_key})


def test_round_trip_keeps_table_and_provenance(identity: AgentIdentity, trusted: TrustedAgents) -> None:
    prov = _provenance()
    sealed = seal(_table(), prov, identity)
    assert sealed.sha256 == hashlib.sha256(sealed.value).hexdigest()
    batch = open_envelope(_message(sealed.value, sealed.headers()), trusted)
    assert batch.provenance == prov
    assert batch.table.replace_schema_metadata(None).equals(_table())
    assert batch.sha256 == sealed.sha256


def test_uuid7_is_time_ordered_version_7() -> None:
    ids = [new_batch_id() for _ in range(50)]
    assert all(i[14] == "7" for i in ids)
    assert ids[0][:13] <= ids[-1][:13]


def test_altered_bytes_are_a_hash_mismatch(identity: AgentIdentity, trusted: TrustedAgents) -> None:
    sealed = seal(_table(), _provenance(), identity)
    tampered = bytearray(sealed.value)
    tampered[len(tampered) // 2] ^= 0xFF
    with pytest.raises(EnvelopeError, match=r"tidm.samples\[3\]@42: hash-mismatch") as info:
        open_envelope(_message(bytes(tampered), sealed.headers()), trusted)
    assert info.value.reason == "hash-mismatch"


def test_recomputed_hash_without_the_key_fails_the_signature(
    identity: AgentIdentity, trusted: TrustedAgents
) -> None:
    sealed = seal(_table(), _provenance(), identity)
    tampered = sealed.value[:-1] + bytes([sealed.value[-1] ^ 1])
    headers = [(k, v) for k, v in sealed.headers() if k != HEADER_SHA256]
    headers.append((HEADER_SHA256, hashlib.sha256(tampered).hexdigest().encode()))
    with pytest.raises(EnvelopeError) as info:
        open_envelope(_message(tampered, headers), trusted)
    assert info.value.reason == "bad-signature"


def test_unknown_agent_and_missing_headers(identity: AgentIdentity) -> None:
    sealed = seal(_table(), _provenance(), identity)
    with pytest.raises(EnvelopeError) as info:
        open_envelope(_message(sealed.value, sealed.headers()), TrustedAgents())
    assert info.value.reason == "unknown-agent"
    for missing in (HEADER_SHA256, HEADER_SIGNATURE, HEADER_AGENT):
        headers = [(k, v) for k, v in sealed.headers() if k != missing]
        with pytest.raises(EnvelopeError, match=f"header '{missing}' is missing") as info:
            open_envelope(_message(sealed.value, headers), TrustedAgents())
        assert info.value.reason == "missing-header"


def _signed_raw(identity: AgentIdentity, value: bytes) -> list[tuple[str, bytes]]:
    digest = hashlib.sha256(value).digest()
    return [
        (HEADER_SHA256, digest.hex().encode()),
        (HEADER_SIGNATURE, identity.sign(digest)),
        (HEADER_AGENT, identity.agent_id.encode()),
    ]


def test_truncated_ipc_signed_by_a_trusted_agent_is_malformed(
    identity: AgentIdentity, trusted: TrustedAgents
) -> None:
    value = seal(_table(), _provenance(), identity).value[:40]
    with pytest.raises(EnvelopeError, match=r"@42: malformed-ipc") as info:
        open_envelope(_message(value, _signed_raw(identity, value)), trusted)
    assert info.value.reason == "malformed-ipc"


def test_wrong_schema_is_refused(identity: AgentIdentity, trusted: TrustedAgents) -> None:
    other = pa.table({"x": [1, 2]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, other.schema) as w:
        w.write_table(other)
    value = sink.getvalue().to_pybytes()
    with pytest.raises(EnvelopeError, match="wrong-schema: .*columns") as info:
        open_envelope(_message(value, _signed_raw(identity, value)), trusted)
    assert info.value.reason == "wrong-schema"


def test_provenance_must_match_header_and_rows(identity: AgentIdentity, trusted: TrustedAgents) -> None:
    sealed = seal(_table(), _provenance(rows=5), identity)
    with pytest.raises(EnvelopeError, match="provenance says 5 rows") as info:
        open_envelope(_message(sealed.value, sealed.headers()), trusted)
    assert info.value.reason == "bad-provenance"


def test_identity_key_file_is_private_and_loads(tmp_path, identity: AgentIdentity) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys" / "agent.key"
    identity.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = AgentIdentity.load("agent-a", path)
    assert loaded.sign(b"x") and TrustedAgents({"agent-a": identity.public_key}).verify(
        "agent-a", loaded.sign(b"x"), b"x"
    )


def test_trusted_agents_file_round_trip_and_reload(tmp_path, identity: AgentIdentity) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "trusted.json"
    TrustedAgents({"agent-a": identity.public_key}).save(path)
    registry = TrustedAgents.from_file(path)
    assert registry.verify("agent-a", identity.sign(b"m"), b"m") is True
    assert registry.verify("agent-a", identity.sign(b"m"), b"other") is False
    other = AgentIdentity.generate("agent-b")
    TrustedAgents({"agent-a": identity.public_key, "agent-b": other.public_key}).save(path)
    import os

    os.utime(path, ns=(1, 1))
    assert registry.verify("agent-b", other.sign(b"m"), b"m") is True
