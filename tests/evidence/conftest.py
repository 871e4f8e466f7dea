"""Fixtures for the evidence tests."""

from __future__ import annotations

import pytest

from tidm.evidence import Signer, Verifier


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer.generate("tidm.test/log")


@pytest.fixture(scope="session")
def verifier(signer: Signer) -> Verifier:
    return signer.verifier
