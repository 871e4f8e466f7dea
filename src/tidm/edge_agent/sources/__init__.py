"""Sources: one module per protocol behind the `Source` protocol."""

from tidm.edge_agent.sources.base import Emit, RawSample, Source

__all__ = ["Emit", "RawSample", "Source"]
