"""Attacks on the agent's OPC UA server trust, each against a real asyncua server (the simulator):
a server certificate speaks only for the endpoint it names, only CAs issue, every certificate of the
chain must be valid. Each attack is refused loudly, naming the endpoint and the certificate's subject,
before anything is collected; the honest setups (CA chain, pinned leaf) still connect."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from tests.security.edge_pki import DAY, NOW, Issued, certificate

from tidm.edge_agent.config import OpcUaSourceSettings
from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.opcua import OpcUaSource, UntrustedServerError
from tidm.simulator import Simulator, SimulatorConfig

pytestmark = pytest.mark.integration

AGENT_URI = "urn:tidm:agent:security-test"
PLC_A, PLC_B = "urn:plant:plc-a", "urn:plant:plc-b"
HOST_A, HOST_B = "127.0.0.1", "127.0.0.2"


@pytest.fixture
def trusted(tmp_path: Path) -> Path:
    folder = tmp_path / "trusted"
    folder.mkdir()
    return folder


@pytest.fixture
def agent_files(tmp_path: Path) -> tuple[Path, Path]:
    return certificate("tidm agent", uri=AGENT_URI, hosts=("localhost",)).write(tmp_path, "agent")


def _sim(tmp_path: Path, server: Issued, *, host: str, uri: str) -> SimulatorConfig:
    cert, key = server.write(tmp_path, f"server-{host}-{abs(hash(server.subject))}")
    security = {"mode": "basic256sha256", "certificate": cert, "private_key": key}
    base = SimulatorConfig.fleet(1, 2, period_ms=100, security=security)
    return base.model_copy(update={"host": host, "application_uri": uri})


def _source(
    endpoint: str, agent_files: tuple[Path, Path], trusted: Path, expected_uri: str | None = None
) -> OpcUaSource:
    cert, key = agent_files
    return OpcUaSource(
        OpcUaSourceSettings(
            endpoint=endpoint,
            certificate=cert,
            private_key=key,
            trust_folder=trusted,
            application_uri=AGENT_URI,
            server_application_uri=expected_uri,
            reconnect_initial_s=0.1,
        )
    )


async def _collect(source: OpcUaSource, want: int, timeout_s: float = 30) -> list[RawSample]:
    got: list[RawSample] = []

    def emit(name: str, samples: Sequence[RawSample]) -> None:
        got.extend(samples)

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(emit, stop))
    try:
        async with asyncio.timeout(timeout_s):
            while len(got) < want and not task.done():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    return got


async def _refused(source: OpcUaSource) -> str:
    with pytest.raises(UntrustedServerError) as caught:
        await _collect(source, want=1, timeout_s=20)
    assert source.stats.connects == 0, "nothing was collected over an unverified channel"
    assert source.stats.subscribed == 0
    return str(caught.value)


async def test_honest_ca_chain_connects(
    tmp_path: Path, trusted: Path, agent_files: tuple[Path, Path]
) -> None:
    root = certificate("plant root CA", ca=True, path_length=1)
    intermediate = certificate("plant issuing CA", issuer=root, ca=True, path_length=0)
    server = certificate("plc-a", issuer=intermediate, uri=PLC_A, hosts=(HOST_A, "localhost"))
    root.trust(trusted, "root")
    intermediate.trust(trusted, "issuing")
    async with Simulator(_sim(tmp_path, server, host=HOST_A, uri=PLC_A)) as sim:
        source = _source(sim.endpoint, agent_files, trusted, expected_uri=PLC_A)
        got = await _collect(source, want=4)
    assert len(got) >= 4 and {s.signal for s in got} == {"Signal001", "Signal002"}
    assert source.stats.connects == 1 and source.stats.subscribed == 2


async def test_one_plcs_pinned_leaf_cannot_impersonate_another_endpoint(
    tmp_path: Path, trusted: Path, agent_files: tuple[Path, Path]
) -> None:
    plc_a = certificate("plc-a", uri=PLC_A, hosts=(HOST_A,))
    plc_b = certificate("plc-b", uri=PLC_B, hosts=(HOST_B,))
    plc_a.trust(trusted, "plc-a")
    plc_b.trust(trusted, "plc-b")
    # The honest PLC B connects with its pinned leaf.
    async with Simulator(_sim(tmp_path, plc_b, host=HOST_B, uri=PLC_B)) as sim:
        honest = _source(sim.endpoint, agent_files, trusted)
        assert len(await _collect(honest, want=2)) >= 2
    # PLC A's key (stolen, or PLC A itself) answers at B's address with A's trusted certificate.
    async with Simulator(_sim(tmp_path, plc_a, host=HOST_B, uri=PLC_A)) as sim:
        source = _source(sim.endpoint, agent_files, trusted)
        text = await _refused(source)
    assert sim.endpoint in text and plc_a.subject in text
    assert f"does not name the host {HOST_B!r}" in text


async def test_a_leaf_in_the_trust_folder_cannot_act_as_a_ca(
    tmp_path: Path, trusted: Path, agent_files: tuple[Path, Path]
) -> None:
    plc_a = certificate("plc-a", uri=PLC_A, hosts=(HOST_A,))
    plc_a.trust(trusted, "plc-a")
    # With PLC A's key, the attacker issues a certificate that names PLC B's host and ApplicationUri.
    forged = certificate("plc-b", issuer=plc_a, uri=PLC_B, hosts=(HOST_B,))
    async with Simulator(_sim(tmp_path, forged, host=HOST_B, uri=PLC_B)) as sim:
        source = _source(sim.endpoint, agent_files, trusted, expected_uri=PLC_B)
        text = await _refused(source)
    assert sim.endpoint in text and forged.subject in text and "not trusted" in text
    assert f"its issuer (subject {plc_a.subject}" in text
    assert "it is not a CA (basicConstraints CA:TRUE missing)" in text


async def test_expired_intermediate_is_refused(
    tmp_path: Path, trusted: Path, agent_files: tuple[Path, Path]
) -> None:
    root = certificate("plant root CA", ca=True)
    expired = certificate(
        "plant issuing CA 2019", issuer=root, ca=True, not_before=NOW - 800 * DAY, not_after=NOW - DAY
    )
    server = certificate("plc-a", issuer=expired, uri=PLC_A, hosts=(HOST_A,), not_after=NOW + 30 * DAY)
    root.trust(trusted, "root")
    expired.trust(trusted, "issuing")
    async with Simulator(_sim(tmp_path, server, host=HOST_A, uri=PLC_A)) as sim:
        source = _source(sim.endpoint, agent_files, trusted, expected_uri=PLC_A)
        text = await _refused(source)
    assert sim.endpoint in text and server.subject in text
    assert f"its issuer (subject {expired.subject}" in text and "outside its validity period" in text


async def test_application_uri_mismatch_is_refused(
    tmp_path: Path, trusted: Path, agent_files: tuple[Path, Path]
) -> None:
    # Same host, so only the ApplicationUri tells PLC A from PLC B: the agent expects B.
    plc_a = certificate("plc-a", uri=PLC_A, hosts=(HOST_A,))
    plc_a.trust(trusted, "plc-a")
    async with Simulator(_sim(tmp_path, plc_a, host=HOST_A, uri=PLC_B)) as sim:
        source = _source(sim.endpoint, agent_files, trusted, expected_uri=PLC_B)
        text = await _refused(source)
    assert sim.endpoint in text and plc_a.subject in text
    assert f"its ApplicationUri {PLC_A} is not the expected {PLC_B!r}" in text
    # Without a configured URI the certificate must still carry the one the server advertises.
    async with Simulator(_sim(tmp_path, plc_a, host=HOST_A, uri=PLC_B)) as sim:
        text = await _refused(_source(sim.endpoint, agent_files, trusted))
    assert f"its ApplicationUri {PLC_A} is not the expected {PLC_B!r}" in text
