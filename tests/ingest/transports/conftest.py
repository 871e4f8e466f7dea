"""Fixtures for the transport tests: one `transport` per implementation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidm.ingest.transports import EmbeddedTransport, Transport


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.integration)])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Transport:
    """The contract tests run on the embedded log and, as integration tests, on the real Kafka."""
    if request.param == "embedded":
        return EmbeddedTransport(tmp_path / "log")
    from tidm.ingest.transports import KafkaTransport

    bootstrap = request.getfixturevalue("kafka_bootstrap")
    return KafkaTransport(bootstrap, client_id="tidm-transport-tests")
