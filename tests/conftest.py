"""Fixtures for the whole suite: the real services of deploy/dev/services.py, started only when a test asks.

`dev_services`, `kafka_bootstrap`, `s3_config`, `s3_client`, `mqtt_broker` are session-scoped. Each starts
the service(s) it needs unless `.dev-services/state.json` shows them healthy (e.g. after `make services-up`),
and at the end of the session stops only what the session itself started. `s3_bucket` is a fresh bucket per
test; `unique_name` makes per-test Kafka topic / S3 bucket / MQTT names.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from minio import Minio

ROOT = Path(__file__).resolve().parents[1]
SERVICES_PY = ROOT / "deploy" / "dev" / "services.py"

# Fixtures that start real services; a test using one must be marked `integration`, so that
# `pytest -m "not integration"` never starts anything.
_SERVICE_FIXTURES = frozenset(
    {"dev_services", "kafka_bootstrap", "kafka_cluster", "s3_config", "s3_client", "s3_bucket", "mqtt_broker"}
)


def pytest_configure(config: pytest.Config) -> None:
    # Numba's cache defaults to __pycache__ beside the sources; keep compiled kernels in the ignored .cache/.
    os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    used = _SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if used and item.get_closest_marker("integration") is None:
        pytest.fail(
            f"{item.nodeid} uses {', '.join(sorted(used))} but is not marked @pytest.mark.integration"
        )


def load_services_module() -> ModuleType:
    """deploy/dev/services.py as a module (without putting deploy/dev on sys.path)."""
    name = "tidm_dev_services"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, SERVICES_PY)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {SERVICES_PY}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


class DevServices:
    """Brings services up on a test's first request. Those it starts are recorded as started by pytest and
    stopped when the session ends, unless another live process (another pytest session in this checkout, an
    xdist worker) still holds a lease on them; then the last one to finish stops them. Services that were
    already running (`make services-up`) are never stopped here."""

    OWNER = "pytest"

    def __init__(self, services: ModuleType) -> None:
        self._services = services
        self._leased = False

    def require(self, *names: str) -> dict[str, dict[str, Any]]:
        if not self._leased:
            # Lease before the health check, so that a finishing session cannot stop them under us.
            self._services.lease()
            self._leased = True
        state: dict[str, dict[str, Any]] = self._services.load_state() or {}
        health: dict[str, bool] = self._services.healthy(state)
        missing = [name for name in names if not health.get(name, False)]
        if missing:
            state = self._services.ensure_up(missing, owner=self.OWNER)
        return state

    def close(self) -> None:
        if self._leased:
            self._services.release(self.OWNER)
            self._leased = False


@pytest.fixture(scope="session")
def _dev_services_session() -> Iterator[DevServices]:
    session = DevServices(load_services_module())
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(scope="session")
def dev_services(_dev_services_session: DevServices) -> dict[str, dict[str, Any]]:
    """The run state of all three services (shape of .dev-services/state.json), started if needed."""
    return _dev_services_session.require("kafka", "s3", "mqtt")


@pytest.fixture(scope="session")
def kafka_bootstrap(_dev_services_session: DevServices) -> str:
    """`host:port` of the Kafka broker."""
    return str(_dev_services_session.require("kafka")["kafka"]["bootstrap"])


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A 3-node KRaft cluster of this session's own (services.py's `KafkaCluster`, in a temp folder, on its
    own ports, reusing the jar cache): drills kill and stop its nodes without touching the shared broker."""
    cluster = load_services_module().KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"), 3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def s3_config(_dev_services_session: DevServices) -> dict[str, str]:
    """endpoint (http://host:port), access_key, secret_key, region of the S3 server."""
    s3 = _dev_services_session.require("s3")["s3"]
    return {key: str(s3[key]) for key in ("endpoint", "access_key", "secret_key", "region")}


@pytest.fixture(scope="session")
def s3_client(s3_config: dict[str, str]) -> Iterator[Minio]:
    """A minio client for the S3 server; its connection pool is closed at session end."""
    import urllib3
    from minio import Minio

    endpoint = urlsplit(s3_config["endpoint"])
    pool = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=60.0),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    yield Minio(
        endpoint.netloc,
        access_key=s3_config["access_key"],
        secret_key=s3_config["secret_key"],
        region=s3_config["region"],
        secure=endpoint.scheme == "https",
        http_client=pool,
    )
    pool.clear()


@pytest.fixture
def s3_bucket(s3_client: Minio, unique_name: Callable[..., str]) -> Iterator[str]:
    """A new, empty bucket for this test; every object version in it and the bucket are removed after."""
    bucket = unique_name("bucket")
    s3_client.make_bucket(bucket)
    yield bucket
    for obj in s3_client.list_objects(bucket, recursive=True, include_version=True):
        s3_client.remove_object(bucket, obj.object_name or "", version_id=obj.version_id)
    s3_client.remove_bucket(bucket)


@pytest.fixture(scope="session")
def mqtt_broker(_dev_services_session: DevServices) -> tuple[str, int]:
    """(host, port) of the Mosquitto broker (anonymous, plain TCP)."""
    mqtt = _dev_services_session.require("mqtt")["mqtt"]
    return str(mqtt["host"]), int(mqtt["port"])


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[..., str]:
    """`unique_name(prefix)` -> e.g. 'orders-3f2a...': lowercase [a-z0-9-], at most 47 characters, so valid
    as a Kafka topic, an S3 bucket and an MQTT client id. Without a prefix the test's name is used."""

    def make(prefix: str | None = None) -> str:
        base = prefix if prefix is not None else request.node.name
        slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")[:30].strip("-") or "t"
        return f"{slug}-{uuid.uuid4().hex[:16]}"

    return make
