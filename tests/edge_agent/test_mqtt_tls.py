"""MqttSource over TLS and mutual TLS, against a Mosquitto started here with generated certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from tidm.edge_agent.errors import SourceError
from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.decoders import PlainDecoderSettings
from tidm.edge_agent.sources.mqtt import MqttSource, MqttSourceSettings, MqttSubscription, MqttTlsSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEY_PASSWORD = "correct horse battery staple"  # noqa: S105 - a throwaway key made by this test


def _mosquitto() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        pytest.fail("mosquitto is not installed (deploy/dev/services.py up --only mqtt installs it)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        assert issuer is not None
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: str | None = None) -> Path:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _pki(folder: Path) -> Pki:
    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _cert("tidm test CA", ca_key, None, None, ca=True)
    other = _cert("someone else's CA", other_key, None, None, ca=True)
    server = _cert("localhost", server_key, ca, ca_key, server=True)
    client = _cert("tidm-agent", client_key, ca, ca_key)
    return Pki(
        ca=_write_cert(folder / "ca.pem", ca),
        other_ca=_write_cert(folder / "other-ca.pem", other),
        server_cert=_write_cert(folder / "server.pem", server),
        server_key=_write_key(folder / "server.key", server_key),
        client_cert=_write_cert(folder / "client.pem", client),
        client_key=_write_key(folder / "client.key", client_key, KEY_PASSWORD),
    )


@dataclass
class TlsBroker:
    pki: Pki
    tls_port: int  # server authentication only
    mtls_port: int  # require_certificate


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    folder = tmp_path_factory.mktemp("mqtt-tls")
    pki = _pki(folder)
    tls_port, mtls_port = _free_port(), _free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"""
allow_anonymous true
persistence false
# 0 = no limit (the default 1000 would drop a burst to a slow subscriber without a word)
max_queued_messages 0
# Run as whoever started us: as root mosquitto would switch to the `mosquitto` user and lose our files.
user {pwd.getpwuid(os.geteuid()).pw_name}
log_dest file {folder / "mosquitto.log"}

listener {tls_port} 127.0.0.1
cafile {pki.ca}
certfile {pki.server_cert}
keyfile {pki.server_key}

listener {mtls_port} 127.0.0.1
cafile {pki.ca}
certfile {pki.server_cert}
keyfile {pki.server_key}
require_certificate true
"""
    )
    with (folder / "stdout.log").open("wb") as out:
        proc = subprocess.Popen([_mosquitto(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        for port in (tls_port, mtls_port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log = (folder / "stdout.log").read_text(errors="replace")
                        pytest.fail(f"mosquitto with TLS did not start: {log}")
                    time.sleep(0.05)
        yield TlsBroker(pki, tls_port, mtls_port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _publish(broker: TlsBroker, topic: str, payloads: Sequence[str]) -> None:
    """Publish over mutual TLS (the publisher needs a client certificate for the mTLS listener)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}")
    ctx = ssl.create_default_context(cafile=str(broker.pki.ca))
    ctx.load_cert_chain(broker.pki.client_cert, broker.pki.client_key, password=KEY_PASSWORD)
    client.tls_set_context(ctx)
    client.connect("127.0.0.1", broker.mtls_port, 30)
    client.loop_start()
    try:
        for p in payloads:
            info = client.publish(topic, p, qos=1)
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def _source(broker: TlsBroker, port: int, tmp_path: Path, tls: MqttTlsSettings, client_id: str) -> MqttSource:
    return MqttSource(
        MqttSourceSettings(
            host="127.0.0.1",
            port=port,
            client_id=client_id,
            tls=tls,
            quarantine_dir=tmp_path,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
            connect_timeout_s=5,
            subscriptions=[
                MqttSubscription(
                    topic="tls/#", decoder=PlainDecoderSettings(asset_id="a", signal_topic_level=-1)
                )
            ],
        )
    )


async def _collect(source: MqttSource, broker: TlsBroker, n: int) -> list[RawSample]:
    got: list[RawSample] = []
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(lambda _name, s: got.extend(s), stop))
    try:
        async with asyncio.timeout(20):
            while not source.connected.is_set():
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            await asyncio.to_thread(
                _publish, broker, f"tls/{source.settings.client_id}", [str(i) for i in range(n)]
            )
            while len(got) < n:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    return got


async def test_tls_with_server_verification(tls_broker: TlsBroker, tmp_path: Path) -> None:
    source = _source(
        tls_broker, tls_broker.tls_port, tmp_path, MqttTlsSettings(ca_file=tls_broker.pki.ca), "tls-1"
    )
    got = await _collect(source, tls_broker, 5)
    assert [s.value for s in got] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert source.name.startswith("mqtts://") and source.stats.protocol == "5"


async def test_mutual_tls_with_encrypted_client_key(tls_broker: TlsBroker, tmp_path: Path) -> None:
    tls = MqttTlsSettings(
        ca_file=tls_broker.pki.ca,
        cert_file=tls_broker.pki.client_cert,
        key_file=tls_broker.pki.client_key,
        key_password=SecretStr(KEY_PASSWORD),
    )
    source = _source(tls_broker, tls_broker.mtls_port, tmp_path, tls, "mtls-1")
    got = await _collect(source, tls_broker, 3)
    assert [s.value for s in got] == [0.0, 1.0, 2.0]


async def test_mutual_tls_listener_refuses_a_client_without_certificate(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    source = _source(
        tls_broker, tls_broker.mtls_port, tmp_path, MqttTlsSettings(ca_file=tls_broker.pki.ca), "no-cert"
    )
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(lambda _n, _s: None, stop))
    async with asyncio.timeout(20):
        while source.stats.connect_failures < 2:
            assert not task.done()
            await asyncio.sleep(0.02)
    assert not source.connected.is_set() and source.stats.connects == 0
    stop.set()
    await asyncio.wait_for(task, 20)


async def test_untrusted_broker_certificate_is_refused_with_a_clear_error(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    source = _source(
        tls_broker,
        tls_broker.tls_port,
        tmp_path,
        MqttTlsSettings(ca_file=tls_broker.pki.other_ca),
        "untrusted",
    )
    with pytest.raises(SourceError, match="TLS certificate is not trusted"):
        await asyncio.wait_for(source.run(lambda _n, _s: None, asyncio.Event()), 20)


async def test_wrong_key_password_names_the_files_but_not_the_password(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    tls = MqttTlsSettings(
        ca_file=tls_broker.pki.ca,
        cert_file=tls_broker.pki.client_cert,
        key_file=tls_broker.pki.client_key,
        key_password=SecretStr("wrong password 123"),
    )
    source = _source(tls_broker, tls_broker.mtls_port, tmp_path, tls, "badpw")
    with pytest.raises(SourceError) as err:
        await asyncio.wait_for(source.run(lambda _n, _s: None, asyncio.Event()), 20)
    assert str(tls_broker.pki.client_key) in str(err.value)
    assert "wrong password 123" not in str(err.value) and "wrong password 123" not in repr(source.settings)
