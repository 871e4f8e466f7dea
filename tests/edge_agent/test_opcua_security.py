"""OPC UA security: Basic256Sha256 SignAndEncrypt with the agent's certificate and a trust folder;
an untrusted server certificate is refused with a clear error, never downgraded to Security None."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError

from tidm.edge_agent.config import OpcUaSourceSettings
from tidm.edge_agent.errors import SourceError
from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.opcua import OpcUaSource, UntrustedServerError
from tidm.simulator import Simulator, SimulatorConfig

AGENT_URI = "urn:tidm:agent:test"
# The simulator listens here; a server certificate must name the host of the endpoint.
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def _self_signed(directory: Path, name: str, uri: str, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
    key = generate_private_key()
    names = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost"), x509.IPAddress(LOOPBACK)]
    cert = generate_self_signed_app_certificate(key, uri, {}, names, extended=[usage])
    key_path, cert_path = directory / f"{name}.pem", directory / f"{name}.der"
    key_path.write_bytes(dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    server_cert, server_key = _self_signed(
        tmp_path, "server", "urn:tidm:simulator:server", ExtendedKeyUsageOID.SERVER_AUTH
    )
    agent_cert, agent_key = _self_signed(tmp_path, "agent", AGENT_URI, ExtendedKeyUsageOID.CLIENT_AUTH)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    return {
        "server_cert": server_cert,
        "server_key": server_key,
        "agent_cert": agent_cert,
        "agent_key": agent_key,
        "trusted": trusted,
    }


def _secure_sim(pki: dict[str, Path]) -> SimulatorConfig:
    security = {"mode": "basic256sha256", "certificate": pki["server_cert"], "private_key": pki["server_key"]}
    return SimulatorConfig.fleet(1, 3, period_ms=100, security=security)


def _settings(endpoint: str, pki: dict[str, Path]) -> OpcUaSourceSettings:
    return OpcUaSourceSettings(
        endpoint=endpoint,
        certificate=pki["agent_cert"],
        private_key=pki["agent_key"],
        trust_folder=pki["trusted"],
        application_uri=AGENT_URI,
        reconnect_initial_s=0.1,
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


async def test_sign_and_encrypt_session_with_a_trusted_server(pki: dict[str, Path]) -> None:
    shutil.copy(pki["server_cert"], pki["trusted"] / "simulator.der")
    async with Simulator(_secure_sim(pki)) as sim:
        source = OpcUaSource(_settings(sim.endpoint, pki))
        got = await _collect(source, want=9)
    assert len(got) >= 9
    assert {s.signal for s in got} == {"Signal001", "Signal002", "Signal003"}
    assert source.stats.subscribed == 3 and source.stats.reconnect_attempts == 0


async def test_untrusted_server_certificate_is_refused_with_a_clear_error(pki: dict[str, Path]) -> None:
    # The trust folder holds another certificate (the agent's own), not the server's.
    shutil.copy(pki["agent_cert"], pki["trusted"] / "someone-else.der")
    async with Simulator(_secure_sim(pki)) as sim:
        source = OpcUaSource(_settings(sim.endpoint, pki))
        with pytest.raises(UntrustedServerError) as caught:
            await _collect(source, want=1, timeout_s=20)
    text = str(caught.value)
    assert sim.endpoint in text and "not trusted" in text and str(pki["trusted"]) in text
    assert "SHA-256" in text and "urn:tidm:simulator:server" in text
    assert source.stats.connects == 0, "nothing was collected over an unverified channel"


async def test_secure_settings_never_fall_back_to_an_unsecured_server(pki: dict[str, Path]) -> None:
    async with Simulator(SimulatorConfig.fleet(1, 1)) as sim:  # offers Security None only
        source = OpcUaSource(_settings(sim.endpoint, pki))
        with pytest.raises(SourceError, match="offers no Basic256Sha256 SignAndEncrypt endpoint"):
            await _collect(source, want=1, timeout_s=20)
    assert source.stats.connects == 0


def test_security_none_only_when_written_explicitly(pki: dict[str, Path]) -> None:
    with pytest.raises(ValidationError, match="needs certificate, private_key, trust_folder"):
        OpcUaSourceSettings(endpoint="opc.tcp://127.0.0.1:4840")
    assert OpcUaSourceSettings(endpoint="opc.tcp://127.0.0.1:4840", security="none").security == "none"
