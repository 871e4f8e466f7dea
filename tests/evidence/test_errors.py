"""The evidence errors: one root, retry behaviour marked, and where a verification failed."""

from __future__ import annotations

from tidm.errors import Terminal, TidmError, Transient
from tidm.evidence import (
    EntryError,
    EvidenceError,
    NoteError,
    ProofError,
    StoreError,
    TamperError,
    UnverifiedNoteError,
    VerificationError,
)


def test_hierarchy() -> None:
    assert issubclass(EvidenceError, TidmError)
    assert issubclass(EntryError, Terminal) and issubclass(EntryError, ValueError)
    assert issubclass(StoreError, Transient)
    for cls in (ProofError, NoteError, UnverifiedNoteError, TamperError):
        assert issubclass(cls, VerificationError)
        assert issubclass(cls, Terminal)


def test_verification_error_says_what_and_where() -> None:
    error = TamperError("entry bytes changed", index=41, object="entries", tile="tile/0/000")
    assert (error.what, error.index, error.object, error.tile) == (
        "entry bytes changed",
        41,
        "entries",
        "tile/0/000",
    )
    assert str(error) == "entry bytes changed (index=41, object=entries, tile=tile/0/000)"
    assert str(VerificationError("bad root")) == "bad root"
