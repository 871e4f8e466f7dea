"""A small X.509 factory for the OPC UA trust tests: CAs, intermediates and server leaves with the
subjectAltName (ApplicationUri, DNS/IP host) and validity each attack needs."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Certificate (DER) and private key (PEM) files, as the simulator and the agent load them."""
        cert_path, key_path = directory / f"{name}.der", directory / f"{name}.pem"
        cert_path.write_bytes(self.der)
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    def trust(self, folder: Path, name: str) -> None:
        (folder / f"{name}.der").write_bytes(self.der)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate(
    name: str,
    *,
    issuer: Issued | None = None,
    ca: bool = False,
    key_cert_sign: bool | None = None,
    path_length: int | None = None,
    uri: str | None = None,
    hosts: tuple[str, ...] = (),
    not_before: dt.datetime = NOW - DAY,
    not_after: dt.datetime = NOW + 365 * DAY,
    issuer_name: x509.Name | None = None,
) -> Issued:
    """One certificate; self-signed unless `issuer`. `key_cert_sign` defaults to `ca`."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer = issuer.key if issuer is not None else key
    issued_by = issuer_name or (issuer.cert.subject if issuer is not None else subject)
    sign = ca if key_cert_sign is None else key_cert_sign
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issued_by)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=not ca,
                key_encipherment=not ca,
                data_encipherment=not ca,
                key_agreement=False,
                key_cert_sign=sign,
                crl_sign=sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    names: list[x509.GeneralName] = []
    if uri is not None:
        names.append(x509.UniformResourceIdentifier(uri))
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    return Issued(builder.sign(signer, hashes.SHA256()), key)
