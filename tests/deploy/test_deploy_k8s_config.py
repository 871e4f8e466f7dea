"""What the manifests ask of the program exists: every container command is a real `tidm`
command whose --help runs, every option it passes is one the command has, and every setting the
manifests give (the YAML file from a ConfigMap plus the TIDM_* variables) is accepted by the
settings model of that process."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel
from tests.deploy.k8s_manifests import OVERLAYS, TidmContainer, file_from_config_map, render, tidm_containers

from tidm.cli.main import cli
from tidm.cli.settings import ENV_PREFIX, load_settings

# The settings model each command the manifests run loads (module:attribute).
_MODELS = {
    ("lake", "init"): "tidm.cli.settings:LakeAccessSettings",
    ("lake", "expire"): "tidm.cli.settings:LakeAccessSettings",
    ("agent", "run"): "tidm.cli.settings:AgentProcessSettings",
    ("job", "run"): "tidm.cli.settings:JobProcessSettings",
    ("notary", "run"): "tidm.cli.settings:NotaryProcessSettings",
    ("serve",): "tidm.cli.settings:LakeAccessSettings",
}
# The option naming each command's settings file.
_FILE_OPTIONS = ("--config", "--spec")


def _resolve(args: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """Walk `tidm` groups along `args`: (command path, the command, its own arguments)."""
    command: click.Command = cli
    path: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            raise AssertionError(f"`tidm {' '.join([*path, rest[0]])}` is not a tidm command")
        path.append(rest.pop(0))
        command = sub
    return path, command, rest


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_commands_are_real_tidm_commands(overlay: str) -> None:
    for item in tidm_containers(overlay):
        _check_command(item)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_the_manifests_give_is_accepted(overlay: str, tmp_path: Path) -> None:
    for n, item in enumerate(tidm_containers(overlay)):
        where = tmp_path / str(n)
        where.mkdir()
        _check_settings(item, where)


def _check_command(item: TidmContainer) -> None:
    assert not item.container.get("command"), f"{item.where}: the image's ENTRYPOINT is `tidm`"
    path, command, rest = _resolve(item.args)
    assert not isinstance(command, click.Group), f"{item.where}: `tidm {' '.join(path)}` needs a subcommand"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, f"{item.where}: tidm {' '.join(path)} --help: {result.output}"
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for arg in rest:
        if arg.startswith("--"):
            assert arg.split("=", 1)[0] in known, f"{item.where}: tidm {' '.join(path)} has no {arg}"


def _model(path: list[str]) -> type[BaseModel]:
    spec = _MODELS.get(tuple(path))  # type: ignore[call-overload]
    if spec is None:
        raise AssertionError(f"tests/deploy: which settings model does `tidm {' '.join(path)}` load?")
    module, _, attr = spec.partition(":")
    model: type[BaseModel] = getattr(importlib.import_module(module), attr)
    return model


def _settings_env(item: TidmContainer, tmp_path: Path) -> dict[str, str]:
    """The container's TIDM_* variables; files they name under /run/secrets become stand-in files
    (the secrets themselves are not in the manifests)."""
    env = {}
    for name, value in item.env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name.endswith("_FILE") and value.startswith("/run/secrets/"):
            assert item.volume_for(value) is not None, f"{item.where}: {name}={value} is not mounted"
            stand_in = tmp_path / name
            stand_in.write_text("stand-in-secret\n", encoding="utf-8")
            value = str(stand_in)
        env[name] = value
    return env


def _paths_in(settings: Any) -> list[str]:
    if isinstance(settings, dict):
        return [p for v in settings.values() for p in _paths_in(v)]
    if isinstance(settings, list):
        return [p for v in settings for p in _paths_in(v)]
    text = str(settings)
    return [text] if text.startswith(("/run/secrets/", "/etc/tidm/", "/var/lib/tidm")) else []


def _check_settings(item: TidmContainer, tmp_path: Path) -> None:
    settings, env = _effective_settings(item, tmp_path)
    _check_unused_env(item, settings, env)


def _effective_settings(item: TidmContainer, tmp_path: Path) -> tuple[BaseModel, dict[str, str]]:
    """The settings the container's process loads: its settings file from a ConfigMap plus its env."""
    docs = render(item.overlay)
    path, _, _ = _resolve(item.args)
    model = _model(path)
    files = {}
    for option in _FILE_OPTIONS:
        where = item.option(option)
        if where is not None:
            text = file_from_config_map(docs, item, where)
            assert text is not None, f"{item.where}: {option} {where} does not come from a ConfigMap"
            files[option] = tmp_path / f"{option.strip('-')}.yaml"
            files[option].write_text(text, encoding="utf-8")
    if path == ["job", "run"]:
        # `--spec` is the job spec (what the job does), `--config` its process settings.
        from tidm.stream_processing.spec import load_spec

        assert "--spec" in files, f"{item.where}: tidm job run needs --spec"
        load_spec(files["--spec"])
        settings_file = files.get("--config")
    else:
        settings_file = files.get("--config")
    env = _settings_env(item, tmp_path)
    return load_settings(model, settings_file, env), env


def _check_unused_env(item: TidmContainer, settings: BaseModel, env: dict[str, str]) -> None:
    model = type(settings)
    # Variables for sections this process does not have are skipped by design (one ConfigMap
    # serves several processes); each must still be taken by some process of the overlay.
    sections = set(model.model_fields)
    for name in env:
        section = name[len(ENV_PREFIX) :].split("__")[0].lower()
        if section not in sections:
            taken = _taken_elsewhere(item.overlay, name)
            assert taken, f"{item.where}: no process of the overlay takes {name}"
    # Files the settings name inside the container must be there (mounted volume or the image's
    # writable state directory).
    for file_path in _paths_in(settings.model_dump(mode="json")):
        assert item.volume_for(file_path) is not None, f"{item.where}: {file_path} is on no volume"
    _check_http_endpoint(item, settings)


def _http_endpoint(settings: BaseModel) -> tuple[str, int | None] | None:
    """(host, port) of the process's HTTP endpoint (health/readiness/metrics), None if it has none."""
    for section in ("health", "serve"):
        if section in type(settings).model_fields:
            endpoint = getattr(settings, section)
            return str(endpoint.host), endpoint.port
    return None


def _check_http_endpoint(item: TidmContainer, settings: BaseModel) -> None:
    """Probes and scrapes go where the process listens: the container port is the settings' port,
    and the process listens beyond loopback. A process without an endpoint gets no probes."""
    c = item.container
    batch = item.workload["kind"] in ("Job", "CronJob")
    # `serve` settings are shared by the read-side commands; only `tidm serve` listens on them.
    serves = _resolve(item.args)[0] == ["serve"] or "serve" not in type(settings).model_fields
    endpoint = None if batch or not serves else _http_endpoint(settings)
    probed = [c[p]["httpGet"]["port"] for p in ("livenessProbe", "readinessProbe") if p in c]
    if endpoint is None or endpoint[1] is None:
        assert not probed, f"{item.where}: probes on an HTTP endpoint the process does not serve"
        assert not c.get("ports"), f"{item.where}: a port the process does not serve"
        return
    assert len(probed) == 2, f"{item.where}: the process serves /healthz and /readyz; probe them"
    host, port = endpoint
    beyond_loopback = ("0.0.0.0", "::")  # noqa: S104 - a pod must listen beyond loopback
    assert host in beyond_loopback, f"{item.where}: the endpoint listens on {host} only"
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for name in probed:
        assert ports.get(name) == port, f"{item.where}: probe port {name} is not the settings' port {port}"


def _taken_elsewhere(overlay: str, name: str) -> bool:
    section = name[len(ENV_PREFIX) :].split("__")[0].lower()
    for other in tidm_containers(overlay):
        if name not in other.env:
            continue
        path, _, _ = _resolve(other.args)
        if tuple(path) in _MODELS and section in _model(path).model_fields:
            return True
    return False


def test_an_unknown_setting_in_a_manifest_would_be_caught(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt field of a known section fails to load."""
    from tidm.cli.settings import ConfigError, JobProcessSettings

    with pytest.raises(ConfigError, match="lake.endpiont"):
        load_settings(JobProcessSettings, None, {"TIDM_LAKE__ENDPIONT": "http://x"})


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_data_files_the_manifests_provide_load(overlay: str, tmp_path: Path) -> None:
    """The trusted-agents file (a ConfigMap) and, in dev, the grants file (a generated Secret)
    parse the way the job and the read service read them."""
    import base64

    from tidm.evidence import MemoryEvidenceLog
    from tidm.ingest import TrustedAgents
    from tidm.storage.access import load_access

    docs = render(overlay)
    job = next(c for c in tidm_containers(overlay) if c.args[:2] == ["job", "run"])
    text = file_from_config_map(docs, job, "/etc/tidm/trust/trusted-agents.json")
    assert text is not None
    trust = tmp_path / "trusted-agents.json"
    trust.write_text(text, encoding="utf-8")
    TrustedAgents.from_file(trust)
    secrets = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("tidm-grants")]
    if overlay == "dev":
        (secret,) = secrets
        grants = tmp_path / "grants.yaml"
        grants.write_bytes(base64.b64decode(secret["data"]["grants.yaml"]))
        assert load_access(grants, MemoryEvidenceLog()).authenticate("tidm-dev-token").name == "maintenance"
    else:
        assert not secrets, "production grants are created out of band, never kept in git"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cluster_processes_send_evidence_to_the_topic_the_notary_sequences(
    overlay: str, tmp_path: Path
) -> None:
    """Agents, jobs and the read side append to the notary's topic (no local SQLite log in a pod);
    those that read evidence (`tidm serve`: grant read limits) read the tile store the notary writes,
    at the same endpoint, bucket and prefix, with credentials."""
    loaded = []
    for n, item in enumerate(tidm_containers(overlay)):
        where = tmp_path / str(n)
        where.mkdir()
        settings, _ = _effective_settings(item, where)
        loaded.append((item, _resolve(item.args)[0], settings))
    notaries = [s for _, path, s in loaded if path == ["notary", "run"]]
    writers = [(i, p, s) for i, p, s in loaded if "evidence" in type(s).model_fields]
    assert writers, f"overlays/{overlay}: no process writes evidence"
    notary = notaries[0] if notaries else None
    for item, path, settings in writers:
        evidence = settings.evidence  # type: ignore[attr-defined]
        if path == ["lake", "init"]:
            continue  # writes no evidence
        assert evidence.kind == "kafka", f"{item.where}: evidence goes to a local log, not the notary"
        if notary is not None:
            assert evidence.topic == notary.notary.topic, f"{item.where}: not the notary's topic"
        if path == ["serve"]:
            store = evidence.store
            assert store is not None, f"{item.where}: tidm serve reads evidence: set evidence.store"
            assert store.access_key is not None and store.secret_key is not None, item.where
            assert not store.create_bucket, f"{item.where}: the notary owns the evidence bucket"
            if notary is not None:
                s3 = notary.store.s3
                assert (store.endpoint, store.bucket, store.prefix, store.region) == (
                    s3.endpoint,
                    s3.bucket,
                    s3.prefix,
                    s3.region,
                ), f"{item.where}: evidence.store is not the notary's tile store"
