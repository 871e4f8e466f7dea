"""`_check_trusted` alone (no server): chain building, CA rules, validity and endpoint binding."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.security.edge_pki import DAY, NOW, certificate

from tidm.edge_agent.sources.opcua.trust import UntrustedServerError, _check_trusted

URI = "urn:plant:plc-a"
ENDPOINT = "opc.tcp://plc-a.plant.example:4840"


def test_pinned_leaf_bound_by_dns_name(tmp_path: Path) -> None:
    leaf = certificate("plc-a", uri=URI, hosts=("PLC-A.plant.example",))
    leaf.trust(tmp_path, "plc-a")
    assert _check_trusted(ENDPOINT, leaf.der, tmp_path, application_uri=URI) == leaf.der
    with pytest.raises(UntrustedServerError, match="does not name the host 'plc-b.plant.example'"):
        _check_trusted("opc.tcp://plc-b.plant.example:4840", leaf.der, tmp_path, application_uri=URI)


def test_intermediate_sent_by_the_server_chains_to_the_trusted_root(tmp_path: Path) -> None:
    root = certificate("root", ca=True)
    intermediate = certificate("issuing", issuer=root, ca=True)
    leaf = certificate("plc-a", issuer=intermediate, uri=URI, hosts=("plc-a.plant.example",))
    root.trust(tmp_path, "root")
    chain = leaf.der + intermediate.der
    assert _check_trusted(ENDPOINT, chain, tmp_path, application_uri=URI) == leaf.der
    with pytest.raises(UntrustedServerError, match="not issued by a CA there"):
        _check_trusted(ENDPOINT, leaf.der, tmp_path, application_uri=URI)


def test_ca_without_key_cert_sign_or_beyond_its_path_length_does_not_issue(tmp_path: Path) -> None:
    no_sign = certificate("no-sign", ca=True, key_cert_sign=False)
    leaf = certificate("plc-a", issuer=no_sign, uri=URI, hosts=("plc-a.plant.example",))
    no_sign.trust(tmp_path, "no-sign")
    with pytest.raises(UntrustedServerError, match="keyUsage keyCertSign missing"):
        _check_trusted(ENDPOINT, leaf.der, tmp_path, application_uri=URI)

    other = tmp_path / "other"
    other.mkdir()
    root = certificate("root", ca=True, path_length=0)
    intermediate = certificate("issuing", issuer=root, ca=True)
    leaf = certificate("plc-a", issuer=intermediate, uri=URI, hosts=("plc-a.plant.example",))
    root.trust(other, "root")
    with pytest.raises(UntrustedServerError, match="pathLenConstraint 0"):
        _check_trusted(ENDPOINT, leaf.der + intermediate.der, other, application_uri=URI)


def test_validity_is_checked_up_to_the_root(tmp_path: Path) -> None:
    root = certificate("old root", ca=True, not_before=NOW - 900 * DAY, not_after=NOW - DAY)
    intermediate = certificate("issuing", issuer=root, ca=True)
    leaf = certificate("plc-a", issuer=intermediate, uri=URI, hosts=("plc-a.plant.example",))
    root.trust(tmp_path, "root")
    intermediate.trust(tmp_path, "issuing")
    with pytest.raises(UntrustedServerError, match=r"its issuer \(subject CN=old root.*outside its validity"):
        _check_trusted(ENDPOINT, leaf.der, tmp_path, application_uri=URI)

    expired_leaf = certificate("plc-a", uri=URI, hosts=("plc-a.plant.example",), not_after=NOW - DAY)
    expired_leaf.trust(tmp_path, "leaf")
    with pytest.raises(UntrustedServerError, match="it is outside its validity period"):
        _check_trusted(ENDPOINT, expired_leaf.der, tmp_path, application_uri=URI)


def test_missing_application_uri_or_san_is_refused(tmp_path: Path) -> None:
    bare = certificate("plc-a", hosts=("plc-a.plant.example",))
    bare.trust(tmp_path, "bare")
    with pytest.raises(UntrustedServerError, match=r"its ApplicationUri \(none\) is not the expected"):
        _check_trusted(ENDPOINT, bare.der, tmp_path, application_uri=URI)
    no_san = certificate("plc-a")
    no_san.trust(tmp_path, "no-san")
    with pytest.raises(UntrustedServerError, match="CN=plc-a.*does not name the host"):
        _check_trusted(ENDPOINT, no_san.der, tmp_path, application_uri=URI)
    with pytest.raises(UntrustedServerError, match="cannot be parsed"):
        _check_trusted(ENDPOINT, b"\x30\x03abc", tmp_path, application_uri=URI)
