"""The evidence part's exceptions.

`VerificationError` and its subclasses say *what* failed and *where* (entry index, object, tile), so an
auditor can go straight to the bad record instead of re-running the whole check.
"""

from __future__ import annotations

from tidm.errors import Terminal, TidmError, Transient

__all__ = [
    "EntryError",
    "EvidenceError",
    "KeyFormatError",
    "NoteError",
    "OutOfRangeError",
    "ProofError",
    "StoreError",
    "TamperError",
    "UnverifiedNoteError",
    "VerificationError",
]


class EvidenceError(TidmError):
    """Root of the evidence part's errors."""


class EntryError(EvidenceError, Terminal, ValueError):
    """An evidence entry is invalid: bad digest, unsupported attribute value, too large, not canonical."""


class KeyFormatError(EvidenceError, Terminal, ValueError):
    """A signer or verifier key (text or file) is malformed."""


class OutOfRangeError(EvidenceError, Terminal, ValueError):
    """A leaf index or tree size lies outside the tree it was asked of."""


class StoreError(EvidenceError, Transient):
    """The store could not complete an operation (locked, I/O); retrying may help."""


class VerificationError(EvidenceError, Terminal):
    """Something did not verify.

    `what` says what failed; `index` is the log index of the first bad entry when it is known,
    `object` names the stored object (table, row, file, note) and `tile` the tlog tile, when relevant.
    """

    def __init__(
        self,
        what: str,
        *,
        index: int | None = None,
        object: str | None = None,
        tile: str | None = None,
    ) -> None:
        where = [
            f"{name}={value}"
            for name, value in (("index", index), ("object", object), ("tile", tile))
            if value is not None
        ]
        super().__init__(f"{what} ({', '.join(where)})" if where else what)
        self.what = what
        self.index = index
        self.object = object
        self.tile = tile


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof does not verify."""


class NoteError(VerificationError):
    """A signed note or checkpoint is malformed, or a signature from a known key is invalid."""


class UnverifiedNoteError(NoteError):
    """A well-formed note carries no signature from any of the given verifier keys."""


class TamperError(VerificationError):
    """Stored evidence disagrees with itself or with a signed checkpoint."""
