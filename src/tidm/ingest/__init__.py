"""The wire envelope, transports, agent trust registry and quarantine."""

from tidm.ingest.envelope import Provenance, SealedBatch, VerifiedBatch, new_batch_id, open_envelope, seal
from tidm.ingest.errors import EnvelopeError, IngestError, KeyFileError
from tidm.ingest.identity import AgentIdentity, TrustedAgents
from tidm.ingest.quarantine import FolderQuarantine, Quarantine, QuarantineRecord, TopicQuarantine

__all__ = [
    "AgentIdentity",
    "EnvelopeError",
    "FolderQuarantine",
    "IngestError",
    "KeyFileError",
    "Provenance",
    "Quarantine",
    "QuarantineRecord",
    "SealedBatch",
    "TopicQuarantine",
    "TrustedAgents",
    "VerifiedBatch",
    "new_batch_id",
    "open_envelope",
    "seal",
]
