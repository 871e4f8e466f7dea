"""OPC UA server trust: which server certificate the agent accepts for an endpoint, and the secure
channel set up once it is accepted.

A certificate is accepted only if it is in the trust folder or chains to it through CAs
(CA:TRUE, keyCertSign, pathLenConstraint), every certificate of the chain is within its validity, and
its subjectAltName names the endpoint's host (DNS/IP) and the expected ApplicationUri. Anything else
is an `UntrustedServerError` naming the endpoint and the certificate's subject, never a downgrade.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

from tidm.edge_agent.config import OpcUaSourceSettings
from tidm.edge_agent.errors import SourceError, SourceUnavailable
from tidm.edge_agent.sources.opcua._base import log

__all__ = ["UntrustedServerError", "secure"]


class UntrustedServerError(SourceError):
    """The server's certificate is not trusted for its endpoint: the connection is refused."""


async def secure(client: Any, settings: OpcUaSourceSettings, ua: Any) -> None:
    """Choose the Basic256Sha256 SignAndEncrypt endpoint and set up the channel, once the server's
    certificate passed `_check_trusted`; nothing is sent before (`security: none` skips all this)."""
    s = settings
    name = settings.endpoint
    if s.security == "none":
        return  # written explicitly in the settings: the validator requires it
    from asyncua.crypto import security_policies

    # Endpoints are always listed over an unsecured channel (Part 4, GetEndpoints); nothing
    # else is sent before the server's certificate is checked against the trust folder.
    try:
        endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), s.timeout_s)
    except (OSError, TimeoutError) as exc:
        msg = f"cannot reach OPC UA server {name}: {exc}"
        raise SourceUnavailable(msg) from exc
    wanted = security_policies.SecurityPolicyBasic256Sha256.URI
    chosen = [
        e
        for e in endpoints
        if e.SecurityPolicyUri == wanted and e.SecurityMode == ua.MessageSecurityMode.SignAndEncrypt
    ]
    if not chosen:
        offered = sorted(
            {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints}
        )
        msg = (
            f"{name} offers no Basic256Sha256 SignAndEncrypt endpoint "
            f"(offers {', '.join(offered)}); refusing to connect. "
            "Write `security: none` only if unencrypted collection is intended."
        )
        raise SourceError(msg)
    # Bound to the configured ApplicationUri, else to the one the server advertises: Part 4 has
    # the client check the certificate's URI against the server's ApplicationDescription.
    advertised = chosen[0].Server.ApplicationUri if chosen[0].Server is not None else None
    der = _check_trusted(
        name,
        bytes(chosen[0].ServerCertificate or b""),
        s.trust_folder,
        application_uri=s.server_application_uri or advertised,
    )
    assert s.certificate is not None and s.private_key is not None  # noqa: S101 - validated settings
    try:
        await client.set_security(
            security_policies.SecurityPolicyBasic256Sha256,
            str(s.certificate),
            str(s.private_key),
            server_certificate=der,
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
    except (OSError, ValueError) as exc:
        msg = f"cannot load the agent certificate/key ({s.certificate}, {s.private_key}): {exc}"
        raise SourceError(msg) from exc


def _split_chain(der_chain: bytes) -> list[bytes]:
    """The certificates of a DER chain, leaf first (servers may send leaf + issuers concatenated)."""
    from cryptography import x509

    certs: list[bytes] = []
    rest = der_chain
    while rest:
        # A DER SEQUENCE header: 0x30, then a short- or long-form length.
        if rest[0] != 0x30 or len(rest) < 2:
            msg = "not a DER certificate chain"
            raise ValueError(msg)
        if rest[1] & 0x80:
            n = rest[1] & 0x7F
            length = int.from_bytes(rest[2 : 2 + n], "big") + 2 + n
        else:
            length = rest[1] + 2
        one, rest = rest[:length], rest[length:]
        x509.load_der_x509_certificate(one)
        certs.append(one)
    return certs


def _load_trusted(folder: Path) -> list[Any]:
    from cryptography import x509

    certs = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
            continue
        data = path.read_bytes()
        try:
            certs.append(
                x509.load_pem_x509_certificate(data)
                if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data)
            )
        except ValueError:
            log.warning("trust folder %s: %s is not a certificate; ignored", folder, path.name)
    return certs


def _extension(cert: Any, kind: Any) -> Any:
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _ca_problem(cert: Any, below: int) -> str | None:
    """Why `cert` may not issue certificates (None if it may), `below` CAs between it and the leaf."""
    from cryptography import x509

    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        return "it is not a CA (basicConstraints CA:TRUE missing)"
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.key_cert_sign:
        return "it is not a CA (keyUsage keyCertSign missing)"
    if constraints.path_length is not None and below > constraints.path_length:
        return f"its pathLenConstraint {constraints.path_length} allows fewer CAs below it than {below}"
    return None


def _describe(cert: Any) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    der = cert.public_bytes(Encoding.DER)
    return f"subject {cert.subject.rfc4514_string()}, SHA-256 {hashlib.sha256(der).hexdigest()}"


def _endpoint_host(endpoint: str) -> str:
    from urllib.parse import urlsplit

    host = urlsplit(endpoint).hostname
    if not host:
        msg = f"OPC UA endpoint {endpoint!r} names no host; cannot bind the server certificate to it"
        raise UntrustedServerError(msg)
    return host


def _host_matches(cert: Any, host: str) -> bool:
    import ipaddress

    from cryptography import x509

    names = _extension(cert, x509.SubjectAlternativeName)
    if names is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        wanted = host.rstrip(".").lower()
        return any(n.rstrip(".").lower() == wanted for n in names.get_values_for_type(x509.DNSName))
    return address in names.get_values_for_type(x509.IPAddress)


def _application_uris(cert: Any) -> list[str]:
    from cryptography import x509

    names = _extension(cert, x509.SubjectAlternativeName)
    return [] if names is None else list(names.get_values_for_type(x509.UniformResourceIdentifier))


def _check_trusted(
    endpoint: str,
    der_chain: bytes,
    folder: Path | None,
    *,
    application_uri: str | None,
    now: dt.datetime | None = None,
) -> bytes:
    """Check the server certificate presented at `endpoint`; return its DER (the chain's leaf).

    Accepted only if all hold, else `UntrustedServerError` naming the endpoint and the subject:
    - it is in `folder` (pinned), or a chain leads from it to a certificate in `folder` through
      issuers that are CAs (basicConstraints CA:TRUE, keyUsage keyCertSign, pathLenConstraint);
      the issuers come from `folder` and the chain the server sent;
    - every certificate of the chain, up to its root where the folder has it, is within its validity;
    - its subjectAltName names the endpoint's host (DNS name or IP address) and holds the
      ApplicationUri `application_uri` (the configured one, else the one the server advertises).
    So one server's certificate in the folder lets its key speak for that server only.
    """
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.serialization import Encoding

    if not der_chain:
        msg = f"{endpoint} presented no certificate on its secure endpoint; refusing to connect"
        raise UntrustedServerError(msg)
    try:
        chain = [x509.load_der_x509_certificate(d) for d in _split_chain(der_chain)]
    except ValueError as exc:
        msg = f"{endpoint} presented a certificate that cannot be parsed ({exc}); refusing to connect"
        raise UntrustedServerError(msg) from exc
    leaf = chain[0]
    der = leaf.public_bytes(Encoding.DER)
    if folder is None or not folder.is_dir():
        msg = f"trust folder {folder} for {endpoint} does not exist; refusing to connect"
        raise UntrustedServerError(msg)
    now = now or dt.datetime.now(dt.UTC)
    anchors = _load_trusted(folder)
    anchor_der = {a.public_bytes(Encoding.DER) for a in anchors}
    pool = anchors + chain[1:]
    refusal = f"the certificate of OPC UA server {endpoint} ({_describe(leaf)})"

    # Walk up from the leaf: each step to an issuer whose signature verifies and that is a CA.
    path = [leaf]
    reached = der in anchor_der
    problems: list[str] = []
    while len(path) <= 8:
        current = path[-1]
        if current.issuer == current.subject and len(path) > 1:
            break  # a self-signed root
        step = None
        for candidate in pool:
            if candidate.subject != current.issuer or candidate in path:
                continue
            try:
                current.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            problem = _ca_problem(candidate, below=len(path) - 1)
            if problem is not None:
                problems.append(f"its issuer ({_describe(candidate)}) may not issue certificates: {problem}")
                continue
            step = candidate
            break
        if step is None:
            break
        path.append(step)
        reached = reached or step.public_bytes(Encoding.DER) in anchor_der
    if not reached:
        why = "; ".join(problems) or (
            f"it is not in the trust folder {folder} and not issued by a CA there. "
            "Copy the server certificate (or its CA) into the folder to trust it"
        )
        msg = f"{refusal} is not trusted: {why} (trust folder {folder}); refusing to connect"
        raise UntrustedServerError(msg)
    for cert in path:
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            which = "it is" if cert is leaf else f"its issuer ({_describe(cert)}) is"
            period = (
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} .. {cert.not_valid_after_utc:%Y-%m-%d %H:%M}"
            )
            msg = (
                f"{refusal} is not trusted: {which} outside its validity period ({period} UTC); "
                "refusing to connect"
            )
            raise UntrustedServerError(msg)

    host = _endpoint_host(endpoint)
    if not _host_matches(leaf, host):
        msg = (
            f"{refusal} is not bound to the endpoint: its subjectAltName does not name the host {host!r}; "
            "refusing to connect (a trusted certificate speaks only for the server it names)"
        )
        raise UntrustedServerError(msg)
    uris = _application_uris(leaf)
    if application_uri is None or application_uri not in uris:
        msg = (
            f"{refusal} is not bound to the endpoint: its ApplicationUri {', '.join(uris) or '(none)'} "
            f"is not the expected {application_uri!r}; refusing to connect"
        )
        raise UntrustedServerError(msg)
    return der
