"""Settings of the console: where it listens, how its cookie is sent, which processes the Fleet view
scrapes (their own /readyz and /metrics endpoints, as configured for them; no coordinator)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

__all__ = ["ConsoleSection", "FleetTarget"]


class FleetTarget(BaseModel):
    """One process of the fleet and the base URL of its health endpoint (e.g. http://gw-1:9464)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    kind: Literal["agent", "job", "notary"]
    url: HttpUrl


class ConsoleSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    # Behind the ingress the console is reached over TLS: the session cookie is then `Secure`.
    secure_cookie: bool = True
    fleet: tuple[FleetTarget, ...] = ()
    # The notary's verifier keys (C2SP vkey lines, public): the Evidence view checks checkpoints with them.
    verifier_keys: tuple[str, ...] = ()
    fleet_timeout_s: float = Field(default=2.0, gt=0, le=30)
    # Points per signal sent to the browser: the chart's width in pixels times two (min and max).
    max_buckets: int = Field(default=4000, ge=16, le=100_000)
    # `resolution=raw` (comparison and small ranges) refuses ranges with more samples than this.
    max_raw_points: int = Field(default=20_000_000, ge=0)
