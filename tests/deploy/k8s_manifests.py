"""Helpers for the deploy tests: render the kustomize overlays, look inside the rendered objects,
and turn the vendored CRD schemas (deploy/k8s/schemas) into strict JSON schemas."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
SCHEMAS = K8S / "schemas"
# The Kubernetes version the manifests are validated against (kubernetes-validate's schemas).
K8S_VERSION = "1.33.0"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
# Run-to-completion workloads: no probes, not long-running.
BATCH_KINDS = ("Job", "CronJob")

Doc = dict[str, Any]


@cache
def kustomize_command() -> tuple[str, ...]:
    """The pinned kustomize (built into .cache/bin by deploy/tools/kustomize.sh), else `kubectl kustomize`."""
    script = ROOT / "deploy" / "tools" / "kustomize.sh"
    if shutil.which("go") or (ROOT / ".cache" / "bin" / "kustomize").exists():
        out = subprocess.run(
            ["bash", str(script)], check=True, capture_output=True, text=True, timeout=600
        ).stdout
        return (out.strip().splitlines()[-1], "build")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("neither Go (to build kustomize) nor kubectl is available")
    return (kubectl, "kustomize")


@cache
def render(overlay: str) -> tuple[Doc, ...]:
    """The objects of `deploy/k8s/overlays/<overlay>`, as kustomize renders them."""
    proc = subprocess.run(
        [*kustomize_command(), str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise AssertionError(f"kustomize build overlays/{overlay} failed:\n{proc.stderr}")
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def name_of(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def find(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def config_map(docs: tuple[Doc, ...], name: str) -> Doc | None:
    """A ConfigMap by its name as the pods reference it (kustomize adds a hash suffix to both)."""
    found = find(docs, "ConfigMap", name)
    return found[0] if found else None


def pod_template(workload: Doc) -> Doc:
    """The pod template of a workload (a CronJob's is inside its job template)."""
    spec = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    template: Doc = spec["template"]
    return template


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = pod_template(workload)["spec"]
    return spec


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = pod_template(workload)["metadata"]["labels"]
    return labels


def workloads(docs: tuple[Doc, ...]) -> Iterator[Doc]:
    yield from (d for d in docs if d["kind"] in WORKLOAD_KINDS)


def is_tidm_image(image: str) -> bool:
    return image.rsplit(":", 1)[0].rsplit("/", 1)[-1] == "tidm"


@dataclass
class TidmContainer:
    """One container that runs the TIDM image, with what the manifests give it."""

    overlay: str
    workload: Doc
    container: Doc
    env: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, Doc] = field(default_factory=dict)  # mountPath -> volume

    @property
    def where(self) -> str:
        return f"overlays/{self.overlay}: {name_of(self.workload)} container {self.container['name']}"

    @property
    def args(self) -> list[str]:
        return list(self.container.get("command", [])) + list(self.container.get("args", []))

    def option(self, name: str) -> str | None:
        args = self.args
        return args[args.index(name) + 1] if name in args else None

    def volume_for(self, path: str) -> tuple[str, Doc] | None:
        """The mount covering `path` (longest mount path first) and its volume."""
        for mount_path in sorted(self.mounts, key=len, reverse=True):
            if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
                return mount_path, self.mounts[mount_path]
        return None


def tidm_containers(overlay: str) -> list[TidmContainer]:
    docs = render(overlay)
    found = []
    for workload in workloads(docs):
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for claim in workload["spec"].get("volumeClaimTemplates", []):
            volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"], "claimTemplate": claim}
        for container in spec.get("containers", []):
            if not is_tidm_image(container["image"]):
                continue
            item = TidmContainer(overlay, workload, container)
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef")
                assert ref is not None, f"{item.where}: envFrom only from ConfigMaps (secrets are files)"
                cm = config_map(docs, ref["name"])
                assert cm is not None, f"{item.where}: ConfigMap {ref['name']} is not in the overlay"
                item.env.update(cm.get("data", {}))
            for var in container.get("env", []):
                value_from = var.get("valueFrom", {})
                if "value" in var:
                    item.env[var["name"]] = var["value"]
                elif "configMapKeyRef" in value_from:
                    # A key of a ConfigMap of the overlay (e.g. tidm-env), under another name.
                    ref = value_from["configMapKeyRef"]
                    cm = config_map(docs, ref["name"])
                    assert cm is not None, f"{item.where}: ConfigMap {ref['name']} is not in the overlay"
                    value = cm.get("data", {}).get(ref["key"])
                    assert value is not None or ref.get("optional"), (
                        f"{item.where}: {var['name']}: ConfigMap {ref['name']} has no key {ref['key']}"
                    )
                    if value is not None:
                        item.env[var["name"]] = value
                else:
                    assert "fieldRef" in value_from, (
                        f"{item.where}: {var['name']}: secrets come from files, not variables"
                    )
                    item.env[var["name"]] = "from-the-pod-spec"
            for mount in container.get("volumeMounts", []):
                volume = copy.deepcopy(volumes[mount["name"]])
                volume["_subPath"] = mount.get("subPath")
                item.mounts[mount["mountPath"]] = volume
            found.append(item)
    return found


def file_from_config_map(docs: tuple[Doc, ...], item: TidmContainer, path: str) -> str | None:
    """The text of file `path` inside the container when a ConfigMap provides it, else None."""
    hit = item.volume_for(path)
    if hit is None:
        return None
    mount_path, volume = hit
    if "configMap" not in volume:
        return None
    cm = config_map(docs, volume["configMap"]["name"])
    assert cm is not None, f"{item.where}: ConfigMap {volume['configMap']['name']} is missing"
    key = volume["_subPath"] or path[len(mount_path) :].lstrip("/")
    text = cm.get("data", {}).get(key)
    assert text is not None, f"{item.where}: ConfigMap {cm['metadata']['name']} has no key {key}"
    return str(text)


# --- CRD schemas -------------------------------------------------------------------------------


def _strict(node: Any) -> Any:
    """An OpenAPI v3 structural schema as a JSON schema that rejects unknown fields, as the API
    server's strict field validation (kubectl apply --validate=strict) does."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "format"}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        out.pop("pattern", None)
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) -> strict JSON schema, from deploy/k8s/schemas/*.json."""
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        schema = _strict(doc["openAPIV3Schema"])
        if "definitions" in doc:
            schema["definitions"] = _strict(doc["definitions"])
        schemas[(f"{doc['group']}/{doc['version']}", doc["kind"])] = schema
    return schemas
