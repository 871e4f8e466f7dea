"""Evidence: the tamper-evident log every hop of TIDM appends to.

Entries are RFC 8785 canonical JSON, leaves of an RFC 9162 Merkle tree; the log publishes C2SP
checkpoints signed with Ed25519, so anyone holding a verifier key can check inclusion and consistency
proofs, or re-verify the whole log, with no TIDM code trusted. Stores: SQLite (embedded) and the C2SP
tlog-tiles layout on S3 or a folder (cluster). Proof bundles, object audits, audit reports (`report`)
and W3C PROV export (`prov`) build on them.
"""

from tidm.evidence.api import AuditableLog, EventType, EvidenceEntry, EvidenceLog, LoggedEntry
from tidm.evidence.audit import (
    LandingIndex,
    ObjectFinding,
    check_consistency_with_state,
    check_objects,
    save_state,
)
from tidm.evidence.bundle import BUNDLE_FORMAT, BundleReport, build_bundle, check_bundle
from tidm.evidence.checkpoint import (
    Checkpoint,
    Note,
    NoteSignature,
    Signer,
    Verifier,
    cosign_note,
    key_id,
    load_signer,
    load_verifiers,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    save_signer,
    sign_checkpoint,
    sign_note,
)
from tidm.evidence.entry import (
    MAX_ENTRY_BYTES,
    canonical_bytes,
    entry_from_canonical,
    is_digest,
    sha256_hex,
    validate_entry,
)
from tidm.evidence.errors import (
    EntryError,
    EvidenceError,
    KeyFormatError,
    NoteError,
    OutOfRangeError,
    ProofError,
    StoreError,
    TamperError,
    UnverifiedNoteError,
    VerificationError,
)
from tidm.evidence.lineage import Trace, trace
from tidm.evidence.memory import MemoryEvidenceLog
from tidm.evidence.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from tidm.evidence.objectstore import FolderObjectStore, ObjectStore, S3ObjectStore, S3StoreSettings
from tidm.evidence.sqlite import SqliteEvidenceLog
from tidm.evidence.tiles import TileEvidenceLog
from tidm.evidence.verify import VerifyReport, verify_entry, verify_log

__all__ = [
    "BUNDLE_FORMAT",
    "BundleReport",
    "FolderObjectStore",
    "LandingIndex",
    "ObjectFinding",
    "ObjectStore",
    "S3ObjectStore",
    "S3StoreSettings",
    "TileEvidenceLog",
    "build_bundle",
    "check_bundle",
    "check_consistency_with_state",
    "check_objects",
    "save_state",
    "Trace",
    "trace",
    "EMPTY_ROOT",
    "MAX_ENTRY_BYTES",
    "AuditableLog",
    "Checkpoint",
    "EntryError",
    "EventType",
    "EvidenceEntry",
    "EvidenceError",
    "EvidenceLog",
    "Frontier",
    "KeyFormatError",
    "LoggedEntry",
    "MemoryEvidenceLog",
    "Note",
    "NoteError",
    "NoteSignature",
    "OutOfRangeError",
    "ProofError",
    "Signer",
    "SqliteEvidenceLog",
    "StoreError",
    "TamperError",
    "UnverifiedNoteError",
    "VerificationError",
    "Verifier",
    "VerifyReport",
    "canonical_bytes",
    "consistency_proof",
    "cosign_note",
    "entry_from_canonical",
    "inclusion_proof",
    "is_digest",
    "key_id",
    "leaf_hash",
    "load_signer",
    "load_verifiers",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "root",
    "save_signer",
    "sha256_hex",
    "sign_checkpoint",
    "sign_note",
    "validate_entry",
    "verify_consistency",
    "verify_entry",
    "verify_inclusion",
    "verify_log",
]
