"""Every overlay renders, validates offline against the Kubernetes and CRD schemas with unknown
fields rejected, and keeps the rules of the plan: pod security, probes, images, network flows,
replicas within the topic's partitions, one notary."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from tests.deploy.k8s_manifests import (
    BATCH_KINDS,
    K8S_VERSION,
    OVERLAYS,
    TidmContainer,
    crd_schemas,
    file_from_config_map,
    find,
    is_tidm_image,
    name_of,
    pod_labels,
    pod_spec,
    render,
    tidm_containers,
    workloads,
)


def test_the_three_overlays_exist() -> None:
    assert set(OVERLAYS) >= {"dev", "prod", "gateway"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly_against_kubernetes_and_crd_schemas(overlay: str) -> None:
    crds = crd_schemas()
    problems = []
    for doc in render(overlay):
        key = (doc["apiVersion"], doc["kind"])
        if key in crds:
            validator = jsonschema.Draft202012Validator(crds[key])
            for error in validator.iter_errors(doc):
                path = ".".join(str(p) for p in error.absolute_path)
                problems.append(f"{name_of(doc)}: {path}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{name_of(doc)}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name_of(doc)}: no schema for {doc['apiVersion']} (vendor its CRD schema)")
    assert not problems, f"overlays/{overlay}:\n" + "\n".join(problems)


def test_the_strict_crd_check_rejects_an_unknown_field() -> None:
    """The vendored CRD schemas are strict: a misspelt field fails (as the API server would)."""
    scaled = find(render("dev"), "ScaledObject")[0]
    bad = yaml.safe_load(yaml.safe_dump(scaled))
    bad["spec"]["maxReplicas"] = 3
    schema = crd_schemas()[(bad["apiVersion"], bad["kind"])]
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(bad))
    assert any("maxReplicas" in e.message for e in errors)


def test_the_strict_kubernetes_check_rejects_an_unknown_field() -> None:
    deployment = find(render("dev"), "Deployment", "tidm-job-clean")[0]
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="securityContex"):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_restricted(overlay: str) -> None:
    problems = []
    for workload in workloads(render(overlay)):
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        where = f"{name_of(workload)}"
        if pod.get("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot")
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken false")
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}/{c['name']}: allowPrivilegeEscalation false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}/{c['name']}: readOnlyRootFilesystem")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}/{c['name']}: drop ALL capabilities")
            if "limits" not in c.get("resources", {}):
                problems.append(f"{where}/{c['name']}: resource limits")
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag == "latest":
                problems.append(f"{where}/{c['name']}: image {image} needs a fixed tag")
    assert not problems, f"overlays/{overlay}:\n" + "\n".join(problems)


def _tidm_long_running(overlay: str) -> list[TidmContainer]:
    return [c for c in tidm_containers(overlay) if c.workload["kind"] not in BATCH_KINDS]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tidm_processes_have_probes_volumes_and_metrics(overlay: str) -> None:
    """Probes go to /healthz and /readyz on a declared port, and a declared port is scraped.
    (Which processes serve an endpoint is checked against their settings in test_deploy_k8s_config.)"""
    docs = render(overlay)
    monitored = {
        tuple(sorted(sm["spec"]["selector"]["matchLabels"].items())) for sm in find(docs, "ServiceMonitor")
    }
    for item in _tidm_long_running(overlay):
        c = item.container
        # A read-only root file system needs writable /tmp (HOME, TMPDIR).
        assert "/tmp" in item.mounts, f"{item.where}: /tmp volume"
        ports = {p["name"] for p in c.get("ports", [])}
        if not ports:
            assert "livenessProbe" not in c and "readinessProbe" not in c, item.where
            continue
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert probe in c, f"{item.where}: {probe}"
            assert c[probe]["httpGet"]["port"] in ports, f"{item.where}: {probe} on a declared port"
            assert c[probe]["httpGet"]["path"] == path, item.where
        labels = pod_labels(item.workload)
        selector = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/component")}
        assert tuple(sorted(selector.items())) in monitored, f"{item.where}: no ServiceMonitor"
        services = [
            s
            for s in find(docs, "Service")
            if s["spec"].get("selector") == selector and any(p["name"] in ports for p in s["spec"]["ports"])
        ]
        assert services, f"{item.where}: no Service exposes its metrics port"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_files_under_run_secrets(overlay: str) -> None:
    for item in tidm_containers(overlay):
        for mount_path, volume in item.mounts.items():
            if "secret" in volume:
                assert mount_path.startswith("/run/secrets/"), f"{item.where}: {mount_path}"
        for name, value in item.env.items():
            if name.endswith("_FILE"):
                assert value.startswith("/run/secrets/"), f"{item.where}: {name}"
                assert item.volume_for(value) is not None, f"{item.where}: {name}={value} is not mounted"


def _selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert "matchExpressions" not in selector, "keep policy selectors to matchLabels"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _egress_ports(overlay: str, labels: dict[str, str]) -> set[int | str]:
    ports: set[int | str] = set()
    for policy in find(render(overlay), "NetworkPolicy"):
        if _selected(policy["spec"]["podSelector"], labels):
            for rule in policy["spec"].get("egress", []):
                ports.update(p["port"] for p in rule.get("ports", []))
    return ports


# The flows of the architecture plan, by the ports they use (DNS for everyone).
_KAFKA, _S3, _EQUIPMENT = {9092, 9093}, {9000, 443}, {4840, 1883, 8883}
_FLOWS = {
    "job-clean": ("kafka", "s3"),
    "notary": ("kafka", "s3"),
    # Serve and expire send FETCH/EXPIRE evidence to the evidence topic; init writes none.
    "serve": ("kafka", "s3"),
    "agent": ("kafka", "equipment"),
    "lake-init": ("s3",),
    "lake-expire": ("kafka", "s3"),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_only_the_planned_flows(overlay: str) -> None:
    docs = render(overlay)
    policies = find(docs, "NetworkPolicy")
    for item in tidm_containers(overlay):
        labels = pod_labels(item.workload)
        component = labels["app.kubernetes.io/component"]
        selecting = [p for p in policies if _selected(p["spec"]["podSelector"], labels)]
        denies_all = [p for p in selecting if set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}]
        assert denies_all, f"{item.where}: no default-deny policy selects it"
        allowed = _egress_ports(overlay, labels) - {53}
        wanted = {"kafka": _KAFKA, "s3": _S3, "equipment": _EQUIPMENT}
        expected_kinds = _FLOWS[component]
        for kind, ports in wanted.items():
            if kind in expected_kinds:
                assert allowed & ports, f"{item.where}: {component} -> {kind} is not allowed"
            else:
                assert not allowed & ports, f"{item.where}: {component} -> {kind} must not be allowed"
        # Ingress: Prometheus to every process; the ingress controller to serve only.
        sources = set()
        for p in selecting:
            for rule in p["spec"].get("ingress", []):
                for peer in rule.get("from", []):
                    ns = peer.get("namespaceSelector", {}).get("matchLabels", {})
                    sources.add(ns.get("kubernetes.io/metadata.name", "?"))
        assert "monitoring" in sources, f"{item.where}: Prometheus cannot scrape it"
        assert ("ingress-nginx" in sources) == (component == "serve"), f"{item.where}: ingress flows"


def test_dev_egress_goes_only_to_the_strimzi_brokers_and_minio() -> None:
    docs = render("dev")
    kafka = find(docs, "NetworkPolicy", "tidm-egress-kafka")[0]
    s3 = find(docs, "NetworkPolicy", "tidm-egress-s3")[0]
    assert kafka["spec"]["egress"][0]["to"][0]["podSelector"]["matchLabels"]["strimzi.io/cluster"] == "tidm"
    minio = find(docs, "StatefulSet", "tidm-minio")[0]["spec"]["template"]["metadata"]["labels"]
    assert _selected(s3["spec"]["egress"][0]["to"][0]["podSelector"], minio)


def _job_settings(overlay: str) -> dict[str, Any]:
    """The clean job's spec and process settings, as the manifests give them."""
    docs = render(overlay)
    job = next(c for c in tidm_containers(overlay) if c.args[:2] == ["job", "run"])
    spec = file_from_config_map(docs, job, job.option("--spec") or "")
    process = file_from_config_map(docs, job, job.option("--config") or "")
    assert spec is not None and process is not None
    settings: dict[str, Any] = yaml.safe_load(process)
    settings["job"] = yaml.safe_load(spec)
    settings["_env"] = job.env
    return settings


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_job_replicas_never_exceed_the_topic_partitions(overlay: str) -> None:
    docs = render(overlay)
    settings = _job_settings(overlay)
    scaled = find(docs, "ScaledObject", "tidm-job-clean")[0]
    deployment = find(docs, "Deployment", "tidm-job-clean")[0]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["topic"] in settings["job"]["topics"]
    assert meta["consumerGroup"] == settings["job"]["group_id"]
    assert meta["bootstrapServers"] == settings["_env"]["TIDM_TRANSPORT__BOOTSTRAP"]
    assert meta["allowIdleConsumers"] == "false"
    partitions = settings["transport"]["partitions"]
    topics = [t for t in find(docs, "KafkaTopic") if t["spec"].get("topicName") == meta["topic"]]
    if topics:  # dev: the operator creates the topic; the job's setting must agree with it
        assert topics[0]["spec"]["partitions"] == partitions
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= partitions
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_one_notary_in_a_statefulset(overlay: str) -> None:
    docs = render(overlay)
    notaries = [c for c in tidm_containers(overlay) if c.args[:1] == ["notary"]]
    assert len(notaries) == 1
    workload = notaries[0].workload
    assert workload["kind"] == "StatefulSet"
    assert workload["spec"]["replicas"] == 1
    assert not [s for s in find(docs, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == "tidm-notary"]


def test_dev_brings_kafka_in_kraft_mode_and_minio() -> None:
    docs = render("dev")
    pools = find(docs, "KafkaNodePool")
    assert pools and set(pools[0]["spec"]["roles"]) == {"controller", "broker"}
    assert pools[0]["metadata"]["labels"]["strimzi.io/cluster"] == find(docs, "Kafka")[0]["metadata"]["name"]
    topics = {t["spec"]["topicName"] for t in find(docs, "KafkaTopic")}
    assert {"tidm.samples", "tidm.samples.quarantine", "tidm.evidence"} <= topics
    assert find(docs, "StatefulSet", "tidm-minio")
    job = next(c for c in tidm_containers("dev") if c.args[:1] == ["job"])
    assert job.env["TIDM_LAKE__ENDPOINT"] == "http://tidm-minio:9000"


def test_prod_reaches_kafka_over_tls_with_credentials_and_exposes_serve_over_tls() -> None:
    docs = render("prod")
    assert not find(docs, "Kafka") and not find(docs, "StatefulSet", "tidm-minio")
    for item in tidm_containers("prod"):
        if item.args[:1] in (["job"], ["notary"], ["serve"]) or item.args[:2] == ["lake", "expire"]:
            assert "/run/secrets/kafka" in item.mounts, item.where
    scaled = find(docs, "ScaledObject", "tidm-job-clean")[0]
    auth = scaled["spec"]["triggers"][0]["authenticationRef"]["name"]
    assert find(docs, "TriggerAuthentication", auth)
    ingress = find(docs, "Ingress", "tidm-serve")[0]
    assert ingress["spec"]["tls"], "the read service is reached over TLS"
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert {p["backend"]["service"]["name"] for p in paths} == {"tidm-serve"}
    assert not {"/", "/metrics", "/healthz"} & {p["path"] for p in paths}, "ops endpoints stay inside"


def test_gateway_daemonset_runs_on_labelled_nodes_and_keeps_its_spool_on_the_node() -> None:
    docs = render("gateway")
    (ds,) = find(docs, "DaemonSet")
    spec = pod_spec(ds)
    assert spec["nodeSelector"] == {"tidm.io/gateway": "true"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    (agent,) = [c for c in spec["containers"] if is_tidm_image(c["image"])]
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    assert volumes[mounts["/var/lib/tidm"]]["hostPath"]["path"] == "/var/lib/tidm-agent"
    assert mounts["/run/secrets/agent"] == "credentials"
    assert not find(docs, "Deployment") and not find(docs, "StatefulSet")


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_replicated_workloads_spread_over_nodes_and_drain_one_at_a_time(overlay: str) -> None:
    docs = render(overlay)
    budgets = find(docs, "PodDisruptionBudget")
    for name in ("tidm-job-clean", "tidm-serve"):
        (deployment,) = find(docs, "Deployment", name)
        labels = deployment["spec"]["selector"]["matchLabels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"] == labels]
        assert len(covering) == 1, f"{name}: {len(covering)} PodDisruptionBudgets"
        spec = covering[0]["spec"]
        assert spec.get("maxUnavailable") == 1 or spec.get("minAvailable") == 1, spec
        terms = pod_spec(deployment)["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        keys = {
            t["podAffinityTerm"]["topologyKey"]: t["podAffinityTerm"]["labelSelector"]["matchLabels"]
            for t in terms
        }
        assert keys.get("kubernetes.io/hostname") == labels, name
    assert not [b for b in budgets if "notary" in b["metadata"]["name"]]


def test_dev_kafka_is_three_nodes_with_every_topic_replicated_three_times() -> None:
    docs = render("dev")
    (pool,) = find(docs, "KafkaNodePool")
    assert pool["spec"]["replicas"] == 3
    config = find(docs, "Kafka")[0]["spec"]["kafka"]["config"]
    assert config["min.insync.replicas"] == 2 and config["default.replication.factor"] == 3
    assert (
        config["offsets.topic.replication.factor"] == config["transaction.state.log.replication.factor"] == 3
    )
    assert config["unclean.leader.election.enable"] is False
    topics = find(docs, "KafkaTopic")
    assert topics and all(t["spec"]["replicas"] == 3 for t in topics)
