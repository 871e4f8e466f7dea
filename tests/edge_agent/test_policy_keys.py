"""Policy files (validation, canonical hash) and pseudonymization keys (file, folder, rotation)."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest

from tidm.edge_agent import AgentSettings
from tidm.edge_agent.config import PseudonymKeySettings
from tidm.edge_agent.desensitize import Desensitizer
from tidm.edge_agent.policy import KeyRing, Policy, PolicyError, PseudonymKey, load_policy
from tidm.semantics.classification import Level

POLICY = """
id: plant-1-egress
version: 3
default: pass
rules:
  - {match: {level: core}, action: drop}
  - {match: {signal: "Operator*"}, action: pseudonymize, key: operators}
  - {match: {signal: "Batch*"}, action: mask, keep_prefix: 2}
  - {match: {min_level: important}, action: generalize, step: 0.5, time_step_ms: 60000}
"""


def test_policy_loads_and_resolves_first_matching_rule(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    policy = load_policy(path)
    assert (policy.id, policy.version) == ("plant-1-egress", "3")
    rule = policy.rule_for("OperatorName", asset_id="a", semantic_id=None, level=Level.CORE)
    assert rule is not None and rule.action == "drop"  # level core comes first
    rule = policy.rule_for("OperatorName", asset_id="a", semantic_id=None, level=Level.GENERAL)
    assert rule is not None and rule.action == "pseudonymize" and rule.key == "operators"
    rule = policy.rule_for("Pressure", asset_id="a", semantic_id=None, level=Level.IMPORTANT)
    assert rule is not None and rule.action == "generalize"
    assert policy.rule_for("Pressure", asset_id="a", semantic_id=None, level=Level.GENERAL) is None
    assert policy.key_names() == {"operators"}


def test_policy_hash_is_of_the_canonical_form(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(POLICY, encoding="utf-8")
    # Same meaning, other layout and key order: same hash.
    b = tmp_path / "b.json"
    b.write_text(
        '{"version": "3", "rules": ['
        '{"action": "drop", "match": {"level": "L3"}},'
        '{"action": "pseudonymize", "key": "operators", "match": {"signal": "Operator*"}},'
        '{"keep_prefix": 2, "action": "mask", "match": {"signal": "Batch*"}},'
        '{"action": "generalize", "step": 0.5, "time_step_ms": 60000, "match": {"min_level": 2}}'
        '], "id": "plant-1-egress"}',
        encoding="utf-8",
    )
    pa_, pb = load_policy(a), load_policy(b)
    assert pa_.sha256 == pb.sha256
    assert len(pa_.sha256) == 64
    changed = Policy.model_validate({**pa_.model_dump(), "version": "4"})
    assert changed.sha256 != pa_.sha256


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("id: p\nrules: [{action: pseudonymize}]\n", "needs 'key'"),
        ("id: p\nrules: [{action: generalize}]\n", "needs at least one of"),
        ("id: p\nrules: [{action: generalize, buckets: [3, 1]}]\n", "strictly ascending"),
        ("id: p\nrules: [{action: explode}]\n", "action"),
        ("id: p\ndefault: generalize\n", "needs parameters"),
        ("- a list\n", "mapping at the top level"),
        ("id: p\nrules: [{action: drop, match: {level: secret}}]\n", "secret"),
    ],
)
def test_bad_policies_name_the_file(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "bad-policy.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError, match=r"(?s)bad-policy.yaml.*" + error):
        load_policy(path)


def _secret(n: int) -> bytes:
    return bytes([n]) * 32


def test_key_file_epochs_rotate_by_not_before(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"""
keys:
  - {{name: operators, epoch: 1, secret_b64: "{base64.b64encode(_secret(1)).decode()}"}}
  - {{name: operators, epoch: 2, secret_hex: "{_secret(2).hex()}", not_before: "2030-01-01T00:00:00Z"}}
""",
        encoding="utf-8",
    )
    ring = KeyRing.from_file(path)
    assert ring.key_ids == ["operators@1", "operators@2"]
    before = int(dt.datetime(2029, 6, 1, tzinfo=dt.UTC).timestamp() * 1e6)
    after = int(dt.datetime(2030, 6, 1, tzinfo=dt.UTC).timestamp() * 1e6)
    assert ring.active("operators", at_us=before).key_id == "operators@1"
    assert ring.active("operators", at_us=after).key_id == "operators@2"
    assert ring.active("operators", at_us=after, epoch=1).key_id == "operators@1"
    with pytest.raises(PolicyError, match="no pseudonymization key named 'nobody'"):
        ring.active("nobody", at_us=after)


def test_key_folder_like_run_secrets(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "operators@1").write_bytes(_secret(1) + b"\n")
    (folder / "operators@7").write_bytes(_secret(7))
    (folder / "db-password").write_text("unrelated", encoding="utf-8")
    ring = KeyRing.from_folder(folder)
    assert ring.key_ids == ["operators@1", "operators@7"]
    assert ring.active("operators", at_us=0).key_id == "operators@7"
    assert ring.get("operators@1").secret == _secret(1)  # trailing newline stripped


def test_key_errors_never_show_the_secret(tmp_path: Path) -> None:
    secret = "c2hvcnQ="  # noqa: S105 - base64 of b"short": too short to be a key
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys: [{{name: k, epoch: 0, secret_b64: '{secret}'}}]\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="shorter than 16 bytes") as info:
        KeyRing.from_file(path)
    assert secret not in str(info.value) and "short" not in str(info.value).replace("shorter", "")
    path.write_text("keys: [{name: k, epoch: 0, secret_b64: 'not base64 !!'}]\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="not valid base64") as info:
        KeyRing.from_file(path)
    assert "!!" not in str(info.value)
    path.write_text("keys: [{name: k, epoch: 0, secret_hex: 'zz'}]\n  bad: [\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="not valid YAML") as info:
        KeyRing.from_file(path)
    assert "zz" not in str(info.value)
    key = PseudonymKey("k", 0, _secret(9))
    assert _secret(9).hex() not in repr(key) and "\\t" not in repr(key)
    with pytest.raises(PolicyError, match="does not exist"):
        KeyRing.from_folder(tmp_path / "nope")


def test_agent_settings_build_the_desensitizer(tmp_path: Path) -> None:
    assert Desensitizer.from_settings(AgentSettings()) is None
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    (tmp_path / "map.yaml").write_text(
        "signals: [{signal: 'Operator*', level: important}]\n", encoding="utf-8"
    )
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        f"keys: [{{name: operators, epoch: 4, secret_hex: '{_secret(4).hex()}'}}]\n", encoding="utf-8"
    )
    settings = AgentSettings(
        policy=tmp_path / "policy.yaml",
        classification=tmp_path / "map.yaml",
        pseudonym_keys=PseudonymKeySettings(file=keys),
    )
    d = Desensitizer.from_settings(settings)
    assert d is not None and d.policy.id == "plant-1-egress"
    assert d.plan("a", "OperatorName") == ("pseudonymize", Level.IMPORTANT)
    assert d.plan("a", "Pressure") == ("pass", Level.GENERAL)
    with pytest.raises(PolicyError, match="no pseudonymization key named 'operators'"):
        Desensitizer.from_settings(settings.model_copy(update={"pseudonym_keys": PseudonymKeySettings()}))
    with pytest.raises(PolicyError, match="cannot read policy"):
        Desensitizer.from_settings(settings.model_copy(update={"policy": tmp_path / "missing.yaml"}))
