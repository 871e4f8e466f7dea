from tidm.evidence import EventType, EvidenceEntry, MemoryEvidenceLog, sha256_hex, trace


def _e(
    event: EventType, subject: str, actor: str, inputs: tuple[str, ...] = (), **attrs: object
) -> EvidenceEntry:
    return EvidenceEntry(
        event=event, subject=subject, actor=actor, time_us=1, inputs=inputs, attributes=attrs
    )


B1, B2, CLEAN, FILE = (sha256_hex(x) for x in (b"b1", b"b2", b"clean", b"file"))


def _log(*, receive_b2: bool = True) -> MemoryEvidenceLog:
    log = MemoryEvidenceLog()
    for b in (B1, B2):
        log.append([_e(EventType.CREATE, b, "agent:a"), _e(EventType.SEND, b, "agent:a", (b,))])
        if b == B1 or receive_b2:
            log.append([_e(EventType.RECEIVE, b, "job:j", (b,), verified="sha256+ed25519")])
    log.append(
        [
            _e(EventType.CONTENT_MODIFIED, CLEAN, "job:j", (B1, B2)),
            _e(EventType.SEND, FILE, "job:j", (CLEAN,)),
        ]
    )
    return log


def test_trace_reaches_every_source_batch() -> None:
    result = trace(_log(), FILE)
    assert result.ok, result.problems
    assert sorted(result.sources) == sorted([B1, B2])
    assert set(result.entries) == {FILE, CLEAN, B1, B2}


def test_unlogged_object_and_unverified_batch_are_problems() -> None:
    assert trace(_log(), sha256_hex(b"nobody")).problems[0].endswith("no evidence entry names this object")
    result = trace(_log(receive_b2=False), FILE)
    assert not result.ok
    assert any(
        p.startswith(B2) and "not a batch an agent created and a job verified" in p for p in result.problems
    )
