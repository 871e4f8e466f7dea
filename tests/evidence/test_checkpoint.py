"""C2SP signed notes, Ed25519 keys and tlog checkpoints, checked against the Go note package's vectors."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from tests.evidence._support import ENOCH_SIG, ENOCH_VKEY, GO_TEXT, PETER_SIG, PETER_SKEY, PETER_VKEY

from tidm.evidence import (
    Checkpoint,
    KeyFormatError,
    NoteError,
    Signer,
    UnverifiedNoteError,
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

GO_NOTE = GO_TEXT + "\n" + PETER_SIG


# -- keys ----------------------------------------------------------------------------------------


def test_key_id_matches_the_go_note_package() -> None:
    verifier = Verifier.from_vkey(PETER_VKEY)
    assert verifier.name == "PeterNeumann"
    assert verifier.key_id.hex() == "c74f20a3"
    expected = hashlib.sha256(b"PeterNeumann\n\x01" + verifier.public_key).digest()[:4]
    assert key_id("PeterNeumann", verifier.public_key) == expected
    assert verifier.vkey == PETER_VKEY
    assert Verifier.from_vkey(ENOCH_VKEY).key_id.hex() == "af0cfe78"


def test_signer_key_text_round_trips() -> None:
    signer = Signer.from_skey(PETER_SKEY)
    assert signer.skey == PETER_SKEY
    assert signer.vkey == PETER_VKEY
    assert "AYEKF" not in repr(signer)
    fresh = Signer.generate("tidm.example/notary")
    assert Signer.from_skey(fresh.skey).vkey == fresh.vkey
    assert fresh.vkey.startswith("tidm.example/notary+" + fresh.key_id.hex() + "+")


def test_mangled_verifier_keys_are_rejected() -> None:
    """Like Go's TestNewVerifier: every proper substring and every single-byte change must fail."""
    key = PETER_VKEY
    for start in range(len(key) + 1):
        for end in range(start + 1, len(key) + 1):
            if (start, end) != (0, len(key)):
                with pytest.raises(KeyFormatError):
                    Verifier.from_vkey(key[start:end])
    for position in range(len(key)):
        mangled = key[:position] + chr(ord(key[position]) + 1) + key[position + 1 :]
        with pytest.raises(KeyFormatError):
            Verifier.from_vkey(mangled)
    # Right shape, wrong length or algorithm (key ids adjusted, from Go's test).
    with pytest.raises(KeyFormatError):
        Verifier.from_vkey("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    with pytest.raises(KeyFormatError):
        Verifier.from_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_mangled_signer_keys_are_rejected() -> None:
    key = PETER_SKEY
    for start in range(len(key) + 1):
        for end in range(start + 1, len(key) + 1):
            if (start, end) != (0, len(key)):
                with pytest.raises(KeyFormatError):
                    Signer.from_skey(key[start:end])
    for position in range(len(key)):
        mangled = key[:position] + chr(ord(key[position]) + 1) + key[position + 1 :]
        with pytest.raises(KeyFormatError):
            Signer.from_skey(mangled)


@pytest.mark.parametrize("name", ["", "has space", "a+b", "tab\there"])
def test_invalid_key_names(name: str) -> None:
    with pytest.raises(KeyFormatError):
        Signer.generate(name)


def test_save_and_load_keys(tmp_path: Path) -> None:
    signer = Signer.generate("tidm.example/notary")
    path = tmp_path / "notary.key"
    save_signer(signer, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signer(path).skey == signer.skey
    save_signer(Signer.generate("tidm.example/notary"), path)  # replaces atomically, keeps the mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["notary.key"]

    keys = tmp_path / "verifiers.txt"
    keys.write_text(f"# log keys\n{signer.vkey}\n\n{PETER_VKEY}\n")
    assert [v.vkey for v in load_verifiers(keys)] == [signer.vkey, PETER_VKEY]
    keys.write_text("not a key\n")
    with pytest.raises(KeyFormatError, match="verifiers.txt:1"):
        load_verifiers(keys)
    path.write_text("PRIVATE+KEY+nope\n")
    with pytest.raises(KeyFormatError, match="notary.key"):
        load_signer(path)


# -- notes ---------------------------------------------------------------------------------------


def test_signing_reproduces_the_go_note_byte_for_byte() -> None:
    assert sign_note(GO_TEXT, Signer.from_skey(PETER_SKEY)) == GO_NOTE


def test_open_the_go_note() -> None:
    note = open_note(GO_NOTE, [Verifier.from_vkey(PETER_VKEY)])
    assert note.text == GO_TEXT
    assert note.signers == ("PeterNeumann",)
    assert note.verified[0].key_id.hex() == "c74f20a3"
    assert open_note(GO_NOTE.encode(), [Verifier.from_vkey(PETER_VKEY)]).text == GO_TEXT


def test_open_an_earlier_c2sp_spec_example() -> None:
    """The example of an earlier signed-note spec revision (its key id is 530d903a)."""
    vkey = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
    note = (
        "This is an example message.\n\n\u2014 example.com/foo "
        "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
    )
    assert open_note(note, [Verifier.from_vkey(vkey)]).text == "This is an example message.\n"


def test_unknown_signatures_are_ignored() -> None:
    peter, enoch = Verifier.from_vkey(PETER_VKEY), Verifier.from_vkey(ENOCH_VKEY)
    message = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    note = open_note(message, [peter])
    assert note.signers == ("PeterNeumann",)
    assert [sig.name for sig in note.unverified] == ["EnochRoot"]
    both = open_note(message, [peter, enoch])
    assert both.signers == ("PeterNeumann", "EnochRoot")
    assert both.unverified == ()
    # Same name as a known key but another id: still just unknown.
    impostor = Signer.generate("PeterNeumann")
    assert open_note(cosign_note(GO_NOTE, impostor), [peter]).signers == ("PeterNeumann",)


def test_no_known_signature_is_rejected() -> None:
    with pytest.raises(UnverifiedNoteError, match="no signature from a known key"):
        open_note(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG, [])
    with pytest.raises(UnverifiedNoteError):
        open_note(GO_NOTE, [Signer.generate("someone").verifier])


def test_wrong_key_with_same_name_and_id_is_rejected() -> None:
    """A signature whose name and id match a known key must verify with it, else the note is rejected."""
    peter = Verifier.from_vkey(PETER_VKEY)
    tampered = GO_TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        open_note(tampered, [peter])


def test_altered_text_is_rejected() -> None:
    peter = Verifier.from_vkey(PETER_VKEY)
    altered = GO_NOTE.replace("cryptography", "blockchain")
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(altered, [peter])


def test_duplicate_verifiers_are_ambiguous_only_when_used() -> None:
    peter, enoch = Verifier.from_vkey(PETER_VKEY), Verifier.from_vkey(ENOCH_VKEY)
    open_note(GO_NOTE, [enoch, peter, enoch])
    impostor_key = Signer.generate("EnochRoot").verifier
    forged = Verifier.__new__(Verifier)
    forged.__dict__.update(impostor_key.__dict__)
    forged.key_id = enoch.key_id  # a colliding id, as an attacker could craft
    with pytest.raises(NoteError, match="ambiguous"):
        open_note(GO_TEXT + "\n" + ENOCH_SIG, [enoch, forged])


def test_duplicate_signature_lines_are_tolerated() -> None:
    peter = Verifier.from_vkey(PETER_VKEY)
    note = open_note(GO_TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG, [peter])
    assert note.signers == ("PeterNeumann",)
    assert len(note.unverified) == 1


@pytest.mark.parametrize(
    "message",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        GO_TEXT + "\n" + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2p=\n",
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        GO_TEXT + "\n" + PETER_SIG.replace("\u2014", "-"),
        GO_TEXT + "\n" + "\u2014 PeterNeumann AAAA\n",
        GO_TEXT + "\n" + "\u2014 PeterNeumann not*base64\n",
        GO_TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_malformed_notes_are_rejected(message: str) -> None:
    with pytest.raises(NoteError, match="malformed|control|newline|signatures") as raised:
        open_note(message, [Verifier.from_vkey(PETER_VKEY)])
    assert not isinstance(raised.value, UnverifiedNoteError)


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(NoteError, match="UTF-8"):
        open_note(b"\xff" + GO_NOTE.encode(), [Verifier.from_vkey(PETER_VKEY)])


def test_sixteen_signatures_are_accepted() -> None:
    signers = [Signer.generate(f"witness-{i}") for i in range(16)]
    note = sign_note("rotation and witnesses\n", signers)
    opened = open_note(note, [s.verifier for s in signers])
    assert len(opened.verified) == 16


def test_cosigning_and_key_rotation() -> None:
    old, new, witness = (
        Signer.generate("tidm.example/log"),
        Signer.generate("tidm.example/log"),
        Signer.generate("w"),
    )
    note = sign_note("body\n", old)
    rotated = cosign_note(note, new, [old.verifier])
    cosigned = cosign_note(rotated, witness)
    # Verifiers that know only the old key, only the new key, or only the witness all accept it.
    for verifier in (old.verifier, new.verifier, witness.verifier):
        assert open_note(cosigned, [verifier]).text == "body\n"
    # Re-cosigning replaces the earlier signature by the same key instead of adding one.
    assert cosign_note(cosigned, witness).count("\u2014 w ") == 1
    with pytest.raises(UnverifiedNoteError):
        cosign_note(note, witness, [new.verifier])


def test_sign_note_rejects_bad_text() -> None:
    signer = Signer.generate("k")
    with pytest.raises(NoteError):
        sign_note("no newline", signer)
    with pytest.raises(NoteError):
        sign_note("bell\x07\n", signer)
    with pytest.raises(NoteError):
        sign_note("text\n", [])


# -- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_round_trip(signer: Signer) -> None:
    root_hash = hashlib.sha256(b"root").digest()
    checkpoint = Checkpoint("tidm.test/log", 20852163, root_hash, ("ext one",))
    body = checkpoint.body()
    assert body == f"tidm.test/log\n20852163\n{base64.b64encode(root_hash).decode()}\next one\n"
    note = sign_checkpoint(checkpoint, signer)
    opened, raw = open_checkpoint(note, [signer.verifier], origin="tidm.test/log")
    assert opened == checkpoint
    assert raw.signers == ("tidm.test/log",)
    with pytest.raises(NoteError, match="origin"):
        open_checkpoint(note, [signer.verifier], origin="other")


def test_checkpoint_with_altered_body_is_rejected(signer: Signer) -> None:
    note = sign_checkpoint(Checkpoint("tidm.test/log", 10, bytes(32)), signer)
    with pytest.raises(NoteError, match="invalid signature"):
        open_checkpoint(note.replace("\n10\n", "\n11\n"), [signer.verifier])


def test_checkpoint_wrong_key_is_rejected(signer: Signer) -> None:
    note = sign_checkpoint(Checkpoint("tidm.test/log", 10, bytes(32)), signer)
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(note, [Signer.generate("tidm.test/log").verifier])


def test_c2sp_spec_example_parses() -> None:
    text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    checkpoint = parse_checkpoint(text)
    assert (checkpoint.origin, checkpoint.size, checkpoint.extensions) == (
        "example.com/behind-the-sofa",
        20852163,
        (),
    )
    assert checkpoint.body() == text


@pytest.mark.parametrize(
    "text",
    [
        "origin\n10\n",
        "origin\n10\nAAAA\n",
        "origin\n010\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "origin\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "origin\n1 0\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "origin\n10\n" + base64.b64encode(bytes(32)).decode(),
        "\n10\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "origin\n" + str(2**64) + "\n" + base64.b64encode(bytes(32)).decode() + "\n",
    ],
)
def test_malformed_checkpoints_are_rejected(text: str) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint(text)


def test_empty_tree_checkpoint() -> None:
    assert parse_checkpoint(Checkpoint("o", 0, hashlib.sha256(b"").digest()).body()).size == 0
