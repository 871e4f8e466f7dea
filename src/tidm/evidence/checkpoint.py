"""C2SP signed notes with Ed25519 keys, and tlog-checkpoint bodies inside them.

Formats (c2sp.org/signed-note, c2sp.org/tlog-checkpoint, golang.org/x/mod/sumdb/note):

- note:       `<text ending in \\n>\\n` then lines `— <key name> <base64(key id ‖ signature)>\\n`
- key id:     SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key)[:4]
- verifier:   `<name>+<hex key id>+<base64(0x01 ‖ public key)>`
- signer:     `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>`
- checkpoint: text lines origin, decimal tree size, base64 root hash, then optional extension lines

Third parties verify our checkpoints with the Go note package, or any C2SP implementation, and a vkey.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tidm.evidence.errors import KeyFormatError, NoteError, UnverifiedNoteError

__all__ = [
    "MAX_NOTE_SIGNATURES",
    "Checkpoint",
    "Note",
    "NoteSignature",
    "Signer",
    "Verifier",
    "cosign_note",
    "key_id",
    "load_signer",
    "load_verifiers",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "save_signer",
    "sign_checkpoint",
    "sign_note",
]

MAX_NOTE_SIGNATURES = 100
"""Go's note package rejects more; the signed-note spec asks verifiers to accept at least 16."""

_ALG_ED25519 = 0x01
_SIG_PREFIX = "\u2014 "  # EM DASH, space
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_MAX_NOTE_BYTES = 1 << 20
_MAX_TREE_SIZE = (1 << 64) - 1
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte Ed25519 key id: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([_ALG_ED25519]) + public_key).digest()[:4]


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name)


def _check_name(name: str) -> None:
    if not _valid_name(name):
        msg = f"key name must be non-empty, without spaces or '+': {name!r}"
        raise KeyFormatError(msg)


def _b64decode(text: str) -> bytes:
    """Strict standard base64: alphabet, padding, and the canonical encoding of what it decodes to."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeError, ValueError) as exc:
        msg = f"invalid base64 {text!r:.60}"
        raise ValueError(msg) from exc
    if base64.b64encode(data).decode("ascii") != text:
        msg = f"non-canonical base64 {text!r:.60}"
        raise ValueError(msg)
    return data


class Verifier:
    """An Ed25519 verifier key with its note name and key id."""

    def __init__(self, name: str, public_key: bytes) -> None:
        _check_name(name)
        if len(public_key) != 32:
            msg = f"Ed25519 public keys are 32 bytes, got {len(public_key)}"
            raise KeyFormatError(msg)
        self.name = name
        self.public_key = bytes(public_key)
        self.key_id = key_id(name, self.public_key)
        self._key = Ed25519PublicKey.from_public_bytes(self.public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse `<name>+<hex key id>+<base64(0x01 ‖ public key)>`, checking the key id."""
        name, sep1, rest = vkey.partition("+")
        hex_id, sep2, key_b64 = rest.partition("+")
        if not (sep1 and sep2) or not _KEY_ID_HEX.fullmatch(hex_id):
            msg = f"malformed verifier key {vkey!r}: want <name>+<8 hex digits>+<base64 key>"
            raise KeyFormatError(msg)
        try:
            key = _b64decode(key_b64)
        except ValueError as exc:
            msg = f"malformed verifier key {vkey!r}: {exc}"
            raise KeyFormatError(msg) from exc
        if len(key) != 33 or key[0] != _ALG_ED25519:
            msg = f"verifier key {vkey!r} is not an Ed25519 key (0x01 followed by 32 bytes)"
            raise KeyFormatError(msg)
        verifier = cls(name, key[1:])
        if verifier.key_id.hex() != hex_id:
            msg = f"verifier key {vkey!r}: key id {hex_id} does not match the name and key"
            raise KeyFormatError(msg)
        return verifier

    @property
    def vkey(self) -> str:
        """The text form to distribute: `<name>+<hex key id>+<base64(0x01 ‖ public key)>`."""
        encoded = base64.b64encode(bytes([_ALG_ED25519]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True if `signature` is this key's Ed25519 signature of `message`."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"Verifier({self.vkey!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Verifier) and (self.name, self.public_key) == (other.name, other.public_key)

    def __hash__(self) -> int:
        return hash((self.name, self.public_key))


class Signer:
    """An Ed25519 signing key with its note name and key id. Keep it out of logs and repr."""

    def __init__(self, name: str, seed: bytes) -> None:
        _check_name(name)
        if len(seed) != 32:
            msg = f"Ed25519 private key seeds are 32 bytes, got {len(seed)}"
            raise KeyFormatError(msg)
        self.name = name
        self._seed = bytes(seed)
        self._key = Ed25519PrivateKey.from_private_bytes(self._seed)
        self.verifier = Verifier(name, self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        self.key_id = self.verifier.key_id

    @classmethod
    def generate(cls, name: str) -> Signer:
        """A fresh random key named `name` (a schema-less URL such as `tidm.example/notary` is best)."""
        return cls(name, os.urandom(32))

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>`, checking the key id."""
        if not skey.startswith(_PRIVATE_PREFIX):
            msg = "malformed signer key: it must start with PRIVATE+KEY+"
            raise KeyFormatError(msg)
        name, sep1, rest = skey[len(_PRIVATE_PREFIX) :].partition("+")
        hex_id, sep2, key_b64 = rest.partition("+")
        if not (sep1 and sep2) or not _KEY_ID_HEX.fullmatch(hex_id):
            msg = "malformed signer key: want PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>"
            raise KeyFormatError(msg)
        try:
            key = _b64decode(key_b64)
        except ValueError:
            msg = "malformed signer key: invalid base64 key material"
            raise KeyFormatError(msg) from None
        if len(key) != 33 or key[0] != _ALG_ED25519:
            msg = "signer key is not an Ed25519 key (0x01 followed by a 32-byte seed)"
            raise KeyFormatError(msg)
        signer = cls(name, key[1:])
        if signer.key_id.hex() != hex_id:
            msg = f"signer key for {name!r}: key id {hex_id} does not match the name and key"
            raise KeyFormatError(msg)
        return signer

    @property
    def skey(self) -> str:
        """The private text form: `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>`. Secret."""
        encoded = base64.b64encode(bytes([_ALG_ED25519]) + self._seed).decode("ascii")
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_id.hex()}+{encoded}"

    @property
    def vkey(self) -> str:
        """The matching verifier key text."""
        return self.verifier.vkey

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id.hex()})"


def save_signer(signer: Signer, path: str | os.PathLike[str]) -> None:
    """Write the signer key text to `path` with mode 0600, atomically (temp file, fsync, rename)."""
    target = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(signer.skey + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_signer(path: str | os.PathLike[str]) -> Signer:
    """Read a signer key file written by `save_signer` (or by Go's note.GenerateKey)."""
    text = Path(path).read_text(encoding="utf-8").strip()
    try:
        return Signer.from_skey(text)
    except KeyFormatError as exc:
        msg = f"{path}: {exc}"
        raise KeyFormatError(msg) from None


def load_verifiers(path: str | os.PathLike[str]) -> list[Verifier]:
    """Read verifier keys, one vkey per line; blank lines and `#` comments are skipped."""
    verifiers = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            verifiers.append(Verifier.from_vkey(line))
        except KeyFormatError as exc:
            msg = f"{path}:{number}: {exc}"
            raise KeyFormatError(msg) from None
    return verifiers


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key id and the base64 text after the name."""

    name: str
    key_id: bytes
    base64: str

    @property
    def line(self) -> str:
        """The signature line, newline included."""
        return f"{_SIG_PREFIX}{self.name} {self.base64}\n"


@dataclass(frozen=True)
class Note:
    """An opened note: its text, the signatures that verified and those from unknown keys."""

    text: str
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]

    @property
    def signers(self) -> tuple[str, ...]:
        """Names of the keys whose signatures verified."""
        return tuple(sig.name for sig in self.verified)


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        msg = "note text must end with a newline"
        raise NoteError(msg, object="note")
    if any(ord(ch) < 0x20 and ch != "\n" for ch in text):
        msg = "note text must not contain control characters other than newline"
        raise NoteError(msg, object="note")


def _signature_for(text: str, signer: Signer) -> NoteSignature:
    signature = signer.sign(text.encode("utf-8"))
    return NoteSignature(signer.name, signer.key_id, base64.b64encode(signer.key_id + signature).decode())


def sign_note(text: str, signers: Signer | Sequence[Signer]) -> str:
    """Sign `text` (which must end in a newline) with each signer; return the note."""
    _check_text(text)
    signers = [signers] if isinstance(signers, Signer) else list(signers)
    if not signers:
        msg = "a note needs at least one signer"
        raise NoteError(msg, object="note")
    if len(signers) > MAX_NOTE_SIGNATURES:
        msg = f"a note carries at most {MAX_NOTE_SIGNATURES} signatures"
        raise NoteError(msg, object="note")
    lines = "".join(_signature_for(text, signer).line for signer in signers)
    return f"{text}\n{lines}"


def _parse_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    if isinstance(note, bytes):
        if len(note) > _MAX_NOTE_BYTES:
            msg = f"note is larger than {_MAX_NOTE_BYTES} bytes"
            raise NoteError(msg, object="note")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            msg = "note is not valid UTF-8"
            raise NoteError(msg, object="note") from None
    elif len(note) > _MAX_NOTE_BYTES:
        msg = f"note is larger than {_MAX_NOTE_BYTES} characters"
        raise NoteError(msg, object="note")
    if any(ord(ch) < 0x20 and ch != "\n" for ch in note):
        msg = "note must not contain control characters other than newline"
        raise NoteError(msg, object="note")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in note):
        msg = "note is not valid UTF-8 (lone surrogate)"
        raise NoteError(msg, object="note")
    split = note.rfind("\n\n")
    if split < 0:
        msg = "malformed note: no blank line between text and signatures"
        raise NoteError(msg, object="note")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        msg = "malformed note: signature lines must follow the blank line, each ending in a newline"
        raise NoteError(msg, object="note")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_NOTE_SIGNATURES:
        msg = f"malformed note: more than {MAX_NOTE_SIGNATURES} signatures"
        raise NoteError(msg, object="note")
    signatures = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            msg = f"malformed note: signature line {number} does not start with an em dash and a space"
            raise NoteError(msg, object="note")
        name, _, encoded = line[len(_SIG_PREFIX) :].partition(" ")
        try:
            raw = _b64decode(encoded)
        except ValueError:
            raw = b""
        if not _valid_name(name) or len(raw) < 5:
            msg = f"malformed note: signature line {number} is not '— <key name> <base64 signature>'"
            raise NoteError(msg, object="note")
        signatures.append(NoteSignature(name, raw[:4], encoded))
    return text, signatures


def open_note(note: str | bytes, verifiers: Iterable[Verifier]) -> Note:
    """Verify a signed note and return it.

    Signatures from keys not in `verifiers` are ignored (witnesses, rotated keys). A signature from a
    known key that fails to verify rejects the whole note, as the spec recommends; a note with no
    verified signature raises `UnverifiedNoteError`. Malformed notes raise `NoteError`.
    """
    text, signatures = _parse_note(note)
    known: dict[tuple[str, bytes], list[Verifier]] = {}
    for verifier in verifiers:
        group = known.setdefault((verifier.name, verifier.key_id), [])
        if verifier not in group:
            group.append(verifier)
    message = text.encode("utf-8")
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    seen: set[NoteSignature] = set()
    for signature in signatures:
        if signature in seen:
            continue
        seen.add(signature)
        candidates = known.get((signature.name, signature.key_id), [])
        if not candidates:
            unverified.append(signature)
            continue
        key_label = f"{signature.name}+{signature.key_id.hex()}"
        if len(candidates) > 1:
            msg = f"ambiguous verifier key {key_label}: several keys share this name and id"
            raise NoteError(msg, object="note")
        if not candidates[0].verify(message, _b64decode(signature.base64)[4:]):
            msg = f"invalid signature for key {key_label}"
            raise NoteError(msg, object="note")
        if all(sig.name != signature.name or sig.key_id != signature.key_id for sig in verified):
            verified.append(signature)
    if not verified:
        names = ", ".join(f"{sig.name}+{sig.key_id.hex()}" for sig in unverified)
        msg = f"note has no signature from a known key (signed by: {names})"
        raise UnverifiedNoteError(msg, object="note")
    return Note(text, tuple(verified), tuple(unverified))


def cosign_note(note: str, signer: Signer, verifiers: Iterable[Verifier] = ()) -> str:
    """Add `signer`'s signature to an existing note (a witness cosigning, or a new key during rotation).

    The note must be well formed; if `verifiers` are given it must also verify with them first. An
    earlier signature by the same key is replaced.
    """
    verifiers = list(verifiers)
    if verifiers:
        open_note(note, verifiers)
    text, signatures = _parse_note(note)
    kept = [sig for sig in signatures if (sig.name, sig.key_id) != (signer.name, signer.key_id)]
    if len(kept) >= MAX_NOTE_SIGNATURES:
        msg = f"a note carries at most {MAX_NOTE_SIGNATURES} signatures"
        raise NoteError(msg, object="note")
    lines = "".join(sig.line for sig in [*kept, _signature_for(text, signer)])
    return f"{text}\n{lines}"


@dataclass(frozen=True)
class Checkpoint:
    """A tlog-checkpoint body: origin, tree size, root hash and optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            msg = f"checkpoint origin must be one non-empty line, got {self.origin!r}"
            raise NoteError(msg, object="checkpoint")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            msg = f"checkpoint tree size out of range: {self.size}"
            raise NoteError(msg, object="checkpoint")
        if len(self.root_hash) != 32:
            msg = f"checkpoint root hash must be 32 bytes, got {len(self.root_hash)}"
            raise NoteError(msg, object="checkpoint")
        for line in self.extensions:
            if not line or "\n" in line:
                msg = f"checkpoint extension lines must be non-empty single lines, got {line!r}"
                raise NoteError(msg, object="checkpoint")

    def body(self) -> str:
        """The note text: one line each for origin, size, base64 root, then the extensions."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint body (the note text, not the signatures). Verify the note first."""
    if not text.endswith("\n"):
        msg = "checkpoint text must end with a newline"
        raise NoteError(msg, object="checkpoint")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or any(not line for line in lines):
        msg = "checkpoint must have at least three non-empty lines: origin, tree size, root hash"
        raise NoteError(msg, object="checkpoint")
    origin, size_text, root_text, *extensions = lines
    if not _DECIMAL.fullmatch(size_text):
        msg = f"checkpoint tree size must be decimal without leading zeros, got {size_text!r}"
        raise NoteError(msg, object="checkpoint")
    try:
        root_hash = _b64decode(root_text)
    except ValueError as exc:
        msg = f"checkpoint root hash: {exc}"
        raise NoteError(msg, object="checkpoint") from None
    return Checkpoint(origin, int(size_text), root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signers: Signer | Sequence[Signer]) -> str:
    """The checkpoint as a signed note."""
    return sign_note(checkpoint.body(), signers)


def open_checkpoint(
    note: str | bytes, verifiers: Iterable[Verifier], origin: str | None = None
) -> tuple[Checkpoint, Note]:
    """Verify a signed checkpoint and parse it; if `origin` is given the checkpoint must carry it."""
    opened = open_note(note, verifiers)
    checkpoint = parse_checkpoint(opened.text)
    if origin is not None and checkpoint.origin != origin:
        msg = f"checkpoint is for origin {checkpoint.origin!r}, expected {origin!r}"
        raise NoteError(msg, object="checkpoint")
    return checkpoint, opened
