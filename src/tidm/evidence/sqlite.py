"""The embedded evidence store: one SQLite file, safe for several processes on one machine.

Tables:
- `entries`: index, canonical bytes, leaf hash, and the event/subject/actor/time columns for lookups;
- `inputs`: (input digest, index) pairs, for lineage walks (`by_input`);
- `tree`: hashes of complete subtrees by (level, index), level 0 being the leaf hashes, written as
  appends complete them, so roots and proofs read O(log n) rows;
- `checkpoints`: every signed checkpoint this log issued.

Appends run in one `BEGIN IMMEDIATE` transaction (the writer lock is taken up front, so concurrent
appenders queue instead of failing on upgrade), in WAL mode with `synchronous=FULL`: once `append`
returns, the entries survive a power cut. With `durability="process"` they survive a crash of the
process at once and a power cut after the next `sync()` (group commit: one fsync per offset commit).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from tidm.evidence import merkle
from tidm.evidence.api import EvidenceEntry, LoggedEntry
from tidm.evidence.checkpoint import Checkpoint, Signer, sign_checkpoint
from tidm.evidence.entry import (
    canonical_entry,
    entries_from_canonical,
    entry_from_canonical,
    is_digest,
)
from tidm.evidence.errors import EntryError, EvidenceError, OutOfRangeError, StoreError, TamperError

__all__ = ["SqliteEvidenceLog"]

_SCHEMA_VERSION = "1"
_CHUNK = 2048
_MAX_INDEX = (1 << 63) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    canonical BLOB NOT NULL,
    leaf_hash BLOB NOT NULL,
    event TEXT NOT NULL,
    subject TEXT NOT NULL,
    actor TEXT NOT NULL,
    time_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_subject ON entries (subject, event, actor);
CREATE TABLE IF NOT EXISTS inputs (
    input TEXT NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (input, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tree (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    root_hash BLOB NOT NULL,
    note TEXT NOT NULL,
    created_us INTEGER NOT NULL
);
"""

_Prepared = tuple[bytes, bytes, EvidenceEntry]


def _prepare(entry: EvidenceEntry) -> _Prepared:
    canonical, normalized = canonical_entry(entry)
    return canonical, merkle.leaf_hash(canonical), normalized


class SqliteEvidenceLog:
    """An `EvidenceLog` (and `AuditableLog`) in one SQLite file.

    One instance may be shared by threads; several processes may open the same file. `timeout` is how
    long to wait for another writer before raising `StoreError` (transient).

    A caller with a natural commit point (a job committing offsets, an agent deleting sent batches)
    opens the log with `durability="process"` and calls `sync()` just before that point: the same
    guarantee where it matters, one fsync per commit instead of one per append. Append all entries
    of one step (e.g. one landing) in a single `append` call: one transaction.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 30.0,
        durability: Literal["power", "process"] = "power",
    ) -> None:
        self.path = Path(path)
        self.durability = durability
        # The tree's border after our last committed append, as (size, hashes); `_pending` holds the
        # one an open transaction wrote, adopted only once it commits.
        self._frontier: tuple[int, tuple[bytes, ...]] | None = None
        self._pending: tuple[int, tuple[bytes, ...]] | None = None
        self._lock = threading.RLock()
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            msg = f"cannot open evidence database {self.path}: {exc}"
            raise StoreError(msg) from exc
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        with self._translate():
            db = self._db
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                msg = f"{self.path}: cannot switch the evidence database to WAL mode (got {mode})"
                raise StoreError(msg)
            # "power": every append is fsynced before it returns. "process": appends survive a crash of
            # the process at once (WAL, synchronous=NORMAL) and a power cut after `sync()`, which callers
            # run before they commit offsets: one fsync per commit instead of one per append.
            db.execute(
                "PRAGMA synchronous=FULL" if self.durability == "power" else "PRAGMA synchronous=NORMAL"
            )
        with self._transaction(write=True) as db:
            # One statement at a time: executescript() would commit the transaction we are in.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif row[0] != _SCHEMA_VERSION:
                msg = f"{self.path}: evidence schema version {row[0]}, this code reads {_SCHEMA_VERSION}"
                raise EvidenceError(msg)

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            msg = f"evidence log {self.path} is closed"
            raise EvidenceError(msg)
        return self._conn

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as exc:
            msg = f"stored evidence conflicts with an append ({exc}); run verify"
            raise TamperError(msg, object=str(self.path)) from exc
        except sqlite3.OperationalError as exc:
            msg = f"evidence database {self.path}: {exc}"
            raise StoreError(msg) from exc
        except sqlite3.DatabaseError as exc:
            msg = f"evidence database is damaged: {exc}"
            raise TamperError(msg, object=str(self.path)) from exc

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction: IMMEDIATE for writes (take the writer lock now), a read snapshot otherwise."""
        with self._lock, self._translate():
            db = self._db
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, parameters: tuple[object, ...]) -> list[tuple[int, bytes, bytes]]:
        """One read statement, which SQLite runs on one snapshot by itself: no BEGIN/COMMIT round trips
        (lookups run once per received batch)."""
        with self._lock, self._translate():
            return self._db.execute(sql, parameters).fetchall()

    @staticmethod
    def _size(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()[0])

    def _node_reader(self, db: sqlite3.Connection) -> merkle.NodeReader:
        def read(coords: Sequence[tuple[int, int]]) -> list[bytes]:
            hashes = []
            for level, index in coords:
                row = db.execute(
                    "SELECT hash FROM tree WHERE level = ? AND idx = ?", (level, index)
                ).fetchone()
                if row is None:
                    msg = f"stored tree is missing the subtree at level {level}, index {index}"
                    raise TamperError(msg, index=index << level, object=f"tree({level},{index})")
                hashes.append(bytes(row[0]))
            return hashes

        return read

    def _logged_many(self, rows: Sequence[tuple[int, bytes, bytes]]) -> Iterator[LoggedEntry]:
        """Rows as logged entries, parsed in bulk; one by one (so the bad one is named, after the good
        ones before it) if any row is not a canonical entry."""
        canonical = [bytes(row[1]) for row in rows]
        try:
            entries = entries_from_canonical(canonical)
        except EntryError:
            for row in rows:
                yield self._logged(*row)
            return
        for row, entry, data in zip(rows, entries, canonical, strict=True):
            yield LoggedEntry(int(row[0]), entry, data, bytes(row[2]))

    def _logged(self, index: int, canonical: bytes, leaf: bytes) -> LoggedEntry:
        try:
            entry = entry_from_canonical(bytes(canonical))
        except EntryError as exc:
            msg = f"stored entry is not a valid canonical entry: {exc}"
            raise TamperError(msg, index=index, object="entries") from None
        return LoggedEntry(index, entry, bytes(canonical), bytes(leaf))

    def _insert(self, db: sqlite3.Connection, prepared: Sequence[_Prepared]) -> list[LoggedEntry]:
        size = self._size(db)
        cached = self._frontier
        if cached is not None and cached[0] == size:
            # Nobody appended since our last append (same size, under the writer lock): reuse its
            # border instead of reading log2(n) rows.
            frontier = merkle.Frontier(size, cached[1])
        else:
            frontier = merkle.Frontier(size, self._node_reader(db)(merkle.border(size)))
        logged: list[LoggedEntry] = []
        entry_rows: list[tuple[int, bytes, bytes, str, str, str, int]] = []
        input_rows: list[tuple[str, int]] = []
        node_rows: list[tuple[int, int, bytes]] = []
        if len(prepared) == 1:
            node_rows.extend(frontier.append(prepared[0][1]))
        else:
            # A batch: its subtrees hashed level by level, once, instead of leaf by leaf.
            for level, first, hashes in frontier.extend([leaf for _, leaf, _ in prepared]):
                node_rows.extend((level, first + offset, value) for offset, value in enumerate(hashes))
        for index, (canonical, leaf, entry) in enumerate(prepared, size):
            entry_rows.append(
                (index, canonical, leaf, str(entry.event), entry.subject, entry.actor, entry.time_us)
            )
            input_rows.extend((digest, index) for digest in dict.fromkeys(entry.inputs))
            logged.append(LoggedEntry(index, entry, canonical, leaf))
        db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)", entry_rows)
        if input_rows:  # CREATE entries have none: skip the round trip
            db.executemany("INSERT INTO inputs (input, idx) VALUES (?, ?)", input_rows)
        db.executemany("INSERT INTO tree (level, idx, hash) VALUES (?, ?, ?)", node_rows)
        self._pending = (frontier.size, frontier.hashes())
        return logged

    def _commit_insert(self, prepared: Sequence[_Prepared]) -> list[LoggedEntry]:
        """Insert in one write transaction; once it committed, remember the new border."""
        with self._lock:
            self._pending = None
            with self._transaction(write=True) as db:
                logged = self._insert(db, prepared)
            self._frontier = self._pending
        return logged

    # -- EvidenceLog ------------------------------------------------------------------------------

    def append(self, entries: Sequence[EvidenceEntry]) -> list[LoggedEntry]:
        """Append entries durably, in order, in one transaction; return them as logged."""
        prepared = [_prepare(entry) for entry in entries]
        if not prepared:
            return []
        return self._commit_insert(prepared)

    def append_canonical(self, entries: Sequence[bytes]) -> list[LoggedEntry]:
        """Append canonical entry bytes (the notary's input), checked in bulk, in one transaction."""
        canonical = [bytes(data) for data in entries]
        parsed = entries_from_canonical(canonical)
        if not parsed:
            return []
        prepared = [
            (data, merkle.leaf_hash(data), entry) for data, entry in zip(canonical, parsed, strict=True)
        ]
        return self._commit_insert(prepared)

    def append_once(self, entry: EvidenceEntry) -> LoggedEntry:
        """Append unless an entry with the same (event, subject, actor) exists; return the logged one."""
        prepared = _prepare(entry)
        normalized = prepared[2]
        with self._lock:
            self._pending = None
            with self._transaction(write=True) as db:
                row = db.execute(
                    "SELECT idx, canonical, leaf_hash FROM entries "
                    "WHERE subject = ? AND event = ? AND actor = ? ORDER BY idx LIMIT 1",
                    (normalized.subject, str(normalized.event), normalized.actor),
                ).fetchone()
                if row is not None:
                    return self._logged(*row)
                logged = self._insert(db, [prepared])[0]
            self._frontier = self._pending
        return logged

    def append_checked(
        self, decide: Callable[[Callable[[str], list[LoggedEntry]]], Sequence[EvidenceEntry]]
    ) -> list[LoggedEntry]:
        """Check and record in one `BEGIN IMMEDIATE` transaction: `decide(by_input)` reads the log
        (lookups by input, as `by_input`) and returns the entries to append, which are logged before
        any other writer, in this or another process, can append. A read limit counted from the log
        is exact this way under any concurrency."""
        with self._lock:
            self._pending = None
            with self._transaction(write=True) as db:

                def lookup(subject: str) -> list[LoggedEntry]:
                    _check_digest(subject)
                    rows = db.execute(
                        "SELECT e.idx, e.canonical, e.leaf_hash FROM inputs AS i "
                        "JOIN entries AS e ON e.idx = i.idx WHERE i.input = ? ORDER BY e.idx",
                        (subject,),
                    ).fetchall()
                    return list(self._logged_many(rows))

                prepared = [_prepare(entry) for entry in decide(lookup)]
                logged = self._insert(db, prepared) if prepared else []
            if prepared:
                self._frontier = self._pending
        return logged

    def size(self) -> int:
        """Number of entries in the log."""
        with self._transaction(write=False) as db:
            return self._size(db)

    def read(self, start: int = 0, end: int | None = None) -> Iterator[LoggedEntry]:
        """Entries with start <= index < end, in index order (read in chunks, no lock held between)."""
        position, stop = max(start, 0), _MAX_INDEX if end is None else end
        while position < stop:
            with self._transaction(write=False) as db:
                rows = db.execute(
                    "SELECT idx, canonical, leaf_hash FROM entries "
                    "WHERE idx >= ? AND idx < ? ORDER BY idx LIMIT ?",
                    (position, stop, _CHUNK),
                ).fetchall()
            if not rows:
                return
            yield from self._logged_many(rows)
            position = rows[-1][0] + 1

    def read_raw(self, start: int = 0, end: int | None = None) -> Iterator[list[tuple[int, bytes, bytes]]]:
        """(index, canonical bytes, stored leaf hash) in chunks, unparsed: the audit's fast path."""
        position, stop = max(start, 0), _MAX_INDEX if end is None else end
        while position < stop:
            with self._transaction(write=False) as db:
                # CAST: blobs whatever a tampered row holds, converted in SQLite, not row by row here.
                rows = db.execute(
                    "SELECT idx, CAST(canonical AS BLOB), CAST(leaf_hash AS BLOB) FROM entries "
                    "WHERE idx >= ? AND idx < ? ORDER BY idx LIMIT ?",
                    (position, stop, _CHUNK * 4),
                ).fetchall()
            if not rows:
                return
            yield rows
            position = rows[-1][0] + 1

    def find(self, subject: str, *, event: str | None = None, actor: str | None = None) -> list[LoggedEntry]:
        """Entries whose subject is `subject`, in index order; only of `event` and by `actor` if given.

        The filters use the lookup index, so entries they exclude are never read or parsed (a job asks
        where it received a batch, not for the agent's entries about it).
        """
        _check_digest(subject)
        sql = "SELECT idx, canonical, leaf_hash FROM entries WHERE subject = ?"
        parameters: tuple[object, ...] = (subject,)
        if event is not None:
            sql += " AND event = ?"
            parameters += (str(event),)
        if actor is not None:
            sql += " AND actor = ?"
            parameters += (actor,)
        return list(self._logged_many(self._query(sql + " ORDER BY idx", parameters)))

    def by_input(self, subject: str) -> list[LoggedEntry]:
        """Entries that list `subject` among their inputs, in index order."""
        _check_digest(subject)
        rows = self._query(
            "SELECT e.idx, e.canonical, e.leaf_hash FROM inputs AS i JOIN entries AS e ON e.idx = i.idx "
            "WHERE i.input = ? ORDER BY e.idx",
            (subject,),
        )
        return list(self._logged_many(rows))

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the first `size` entries (default: all), from O(log n) stored subtree hashes."""
        with self._transaction(write=False) as db:
            size = self._bounded(db, size)
            if size == 0:
                return merkle.EMPTY_ROOT
            return merkle.Frontier(size, self._node_reader(db)(merkle.border(size))).root()

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Inclusion proof of entry `index` in the tree of `size` entries (default: all)."""
        with self._transaction(write=False) as db:
            size = self._bounded(db, size)
            return merkle.inclusion_proof(index, size, self._node_reader(db))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Consistency proof from the tree of `old_size` entries to the one of `new_size` (default: all)."""
        with self._transaction(write=False) as db:
            new_size = self._bounded(db, new_size)
            return merkle.consistency_proof(old_size, new_size, self._node_reader(db))

    def checkpoint(self, signer: Signer | Sequence[Signer], origin: str | None = None) -> str:
        """Sign a C2SP checkpoint of the whole log, store it, and return the note text."""
        signers = [signer] if isinstance(signer, Signer) else list(signer)
        if not signers:
            msg = "a checkpoint needs at least one signer"
            raise EvidenceError(msg)
        with self._transaction(write=True) as db:
            size = self._size(db)
            root_hash = (
                merkle.Frontier(size, self._node_reader(db)(merkle.border(size))).root()
                if size
                else merkle.EMPTY_ROOT
            )
            note = sign_checkpoint(Checkpoint(origin or signers[0].name, size, root_hash), signers)
            db.execute(
                "INSERT INTO checkpoints (size, root_hash, note, created_us) VALUES (?, ?, ?, ?)",
                (size, root_hash, note, time.time_ns() // 1000),
            )
        return note

    def sync(self) -> None:
        """Make every append so far survive a power cut (a no-op at the default "power" durability)."""
        if self.durability == "power":
            return
        with self._lock:
            wal = self.path.with_name(self.path.name + "-wal")
            try:
                fd = os.open(wal, os.O_RDONLY)
            except FileNotFoundError:
                return  # nothing written since the last checkpoint of the WAL, which SQLite fsyncs
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- AuditableLog -----------------------------------------------------------------------------

    def node_hashes(self, level: int, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Stored (index, hash) of complete subtrees at `level`, start <= index < end, by index."""
        position, stop = max(start, 0), _MAX_INDEX if end is None else end
        while position < stop:
            with self._transaction(write=False) as db:
                rows = db.execute(
                    "SELECT idx, CAST(hash AS BLOB) FROM tree "
                    "WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx LIMIT ?",
                    (level, position, stop, _CHUNK * 4),
                ).fetchall()
            if not rows:
                return
            yield from rows
            position = rows[-1][0] + 1

    def checkpoints(self) -> list[str]:
        """Signed checkpoint notes this log issued, oldest first."""
        with self._transaction(write=False) as db:
            return [str(row[0]) for row in db.execute("SELECT note FROM checkpoints ORDER BY id")]

    # -- helpers ----------------------------------------------------------------------------------

    def _bounded(self, db: sqlite3.Connection, size: int | None) -> int:
        current = self._size(db)
        if size is None:
            return current
        if not 0 <= size <= current:
            msg = f"tree size {size} is outside the log, which has {current} entries"
            raise OutOfRangeError(msg)
        return size

    def __enter__(self) -> SqliteEvidenceLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteEvidenceLog({str(self.path)!r})"


def _check_digest(subject: str) -> None:
    if not is_digest(subject):
        msg = f"subjects are 64 lowercase hex characters, got {subject!r}"
        raise EntryError(msg)
