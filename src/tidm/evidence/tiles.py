"""The cluster evidence store: the C2SP tlog-tiles layout as immutable objects (S3 or a folder).

    checkpoint                      the latest signed checkpoint (the only object that is replaced)
    tile/<L>/<N>[.p/<W>]            hash tiles: 256 hashes of tree level 8*L (a partial tile has W)
    tile/entries/<N>[.p/<W>]        entry bundles: each entry as a big-endian uint16 length + its bytes
    tidm/checkpoints/<size>-<us>    every checkpoint this log signed (for audits of the history)

Indices N are written in groups of three digits, all but the last prefixed with `x` (x001/x234/067),
exactly as the spec says, so any tlog-tiles client can fetch proofs from the objects alone.

An `append` is one batch: its entries go into bundles and hash tiles in one round of PUTs, so the
notary batches what it consumes and pays per batch, not per entry. Objects are written entry bundles
first, then hash tiles from the top level down, level 0 last: the log's size is read from level 0, so
a crash mid-append leaves at most unreferenced objects, which the replayed append overwrites.

Lookups by subject and by input (lineage) need an index the layout does not have; the store builds it
in memory from the bundles on first use and keeps it up to date as it appends.
"""

from __future__ import annotations

import re
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence

from tidm.evidence import merkle
from tidm.evidence.api import EvidenceEntry, LoggedEntry
from tidm.evidence.checkpoint import Checkpoint, Signer, sign_checkpoint
from tidm.evidence.entry import (
    _parse_entry,
    canonical_bytes,
    entries_from_canonical,
    entry_from_canonical,
    is_digest,
)
from tidm.evidence.errors import EntryError, EvidenceError, OutOfRangeError, TamperError
from tidm.evidence.objectstore import ObjectStore

__all__ = [
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileEvidenceLog",
    "decode_bundle",
    "encode_bundle",
    "parse_tile_path",
    "tile_path",
]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
_HASH = merkle.HASH_SIZE
_LEN = struct.Struct(">H")
_MAX_BUNDLED = 0xFFFF
_CHECKPOINT = "checkpoint"
_HISTORY = "tidm/checkpoints/"


def _encode_index(n: int) -> str:
    text = f"{n:03d}"
    if len(text) % 3:
        text = "0" * (3 - len(text) % 3) + text
    groups = [text[i : i + 3] for i in range(0, len(text), 3)]
    return "/".join([f"x{g}" for g in groups[:-1]] + [groups[-1]])


def tile_path(level: int | str, index: int, width: int = TILE_WIDTH) -> str:
    """`tile/<L>/<N>[.p/<W>]`; level "entries" names an entry bundle."""
    path = f"tile/{level}/{_encode_index(index)}"
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


_TILE_RE = re.compile(r"tile/(entries|\d+)/((?:x\d{3}/)*\d{3})(?:\.p/(\d+))?")


def parse_tile_path(path: str) -> tuple[int | str, int, int] | None:
    """(level, index, width) of a tile path, or None if it is not one."""
    match = _TILE_RE.fullmatch(path)
    if match is None:
        return None
    level: int | str = match[1] if match[1] == "entries" else int(match[1])
    index = int(match[2].replace("x", "").replace("/", ""))
    width = int(match[3]) if match[3] else TILE_WIDTH
    if not 0 < width <= TILE_WIDTH:
        return None
    return level, index, width


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    """Entries as a tlog-tiles entry bundle."""
    return b"".join(_LEN.pack(len(e)) + e for e in entries)


def decode_bundle(data: bytes, where: str) -> list[bytes]:
    """The entries of a bundle; `TamperError` naming `where` if it is cut or padded."""
    out: list[bytes] = []
    position = 0
    while position < len(data):
        if position + 2 > len(data):
            msg = "entry bundle ends inside a length prefix"
            raise TamperError(msg, tile=where)
        (length,) = _LEN.unpack_from(data, position)
        position += 2
        if position + length > len(data):
            msg = f"entry bundle ends inside entry {len(out)} ({length} bytes announced)"
            raise TamperError(msg, tile=where)
        out.append(data[position : position + length])
        position += length
    return out


class TileEvidenceLog:
    """An `EvidenceLog` (and `AuditableLog`) in the C2SP tlog-tiles layout on an `ObjectStore`.

    One writer (the notary) per log; any number of readers. Readers see the size the log had when they
    opened it or last called `refresh`.
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._tiles: dict[tuple[int, int], bytes] = {}
        self._bundles: dict[int, list[bytes]] = {}
        self._index_built = False
        self._by_subject: dict[str, list[int]] = defaultdict(list)
        self._by_input: dict[str, list[int]] = defaultdict(list)
        self._once: dict[tuple[str, str, str], int] = {}
        self._size = 0
        self._frontier = merkle.Frontier()
        self.refresh()

    # -- size and tiles ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the log's size from the level-0 hash tiles (another process may have appended)."""
        with self._lock:
            size = 0
            for key in self.store.list("tile/0/"):
                parsed = parse_tile_path(key)
                if parsed is None or parsed[0] != 0:
                    continue
                size = max(size, parsed[1] * TILE_WIDTH + parsed[2])
            if size != self._size or not self._frontier.size == size:
                self._size = size
                self._tiles.clear()
                self._bundles.clear()
                self._index_built = False
                self._by_subject.clear()
                self._by_input.clear()
                self._once.clear()
                self._frontier = merkle.Frontier(size, self._read_nodes(merkle.border(size), size))

    def _width(self, level: int, index: int, size: int) -> int:
        return max(min(TILE_WIDTH, (size >> (TILE_HEIGHT * level)) - index * TILE_WIDTH), 0)

    def _tile(self, level: int, index: int) -> bytes:
        """Hash tile (level, index) as of the current size (cached; raises `TamperError` if absent/bad)."""
        cached = self._tiles.get((level, index))
        if cached is not None:
            return cached
        width = self._width(level, index, self._size)
        if width == 0:
            msg = f"hash tile {level}/{index} lies beyond the log's {self._size} entries"
            raise OutOfRangeError(msg)
        key = tile_path(level, index, width)
        data = self.store.get(key)
        if data is None and width < TILE_WIDTH:
            data = self.store.get(tile_path(level, index))  # a full tile also serves any prefix
            if data is not None:
                data = data[: width * _HASH]
        if data is None:
            msg = f"hash tile is missing ({self.store.where(key)})"
            raise TamperError(msg, index=index * TILE_WIDTH << (TILE_HEIGHT * level), tile=key)
        if len(data) != width * _HASH:
            msg = f"hash tile holds {len(data)} bytes, a tile of width {width} holds {width * _HASH}"
            raise TamperError(msg, index=index * TILE_WIDTH << (TILE_HEIGHT * level), tile=key)
        self._tiles[(level, index)] = data
        return data

    def _read_nodes(self, coords: Sequence[tuple[int, int]], size: int) -> list[bytes]:
        del size  # the tiles as of the current size serve every smaller tree
        out = []
        for level, index in coords:
            tile_level, sub = divmod(level, TILE_HEIGHT)
            first = index << sub
            tile = self._tile(tile_level, first >> TILE_HEIGHT)
            offset = (first & (TILE_WIDTH - 1)) * _HASH
            chunk = tile[offset : offset + (_HASH << sub)]
            if len(chunk) != _HASH << sub:
                msg = f"stored tree is missing the subtree at level {level}, index {index}"
                raise TamperError(msg, index=index << level, tile=tile_path(tile_level, first >> TILE_HEIGHT))
            hashes = [chunk[i : i + _HASH] for i in range(0, len(chunk), _HASH)]
            out.append(hashes[0] if sub == 0 else merkle.root(hashes))
        return out

    def _reader(self, size: int) -> merkle.NodeReader:
        return lambda coords: self._read_nodes(coords, size)

    def _bundle(self, number: int) -> list[bytes]:
        cached = self._bundles.get(number)
        if cached is not None:
            return cached
        width = min(TILE_WIDTH, self._size - number * TILE_WIDTH)
        key = tile_path("entries", number, width)
        data = self.store.get(key)
        if data is None and width < TILE_WIDTH:
            full = self.store.get(tile_path("entries", number))
            if full is not None:
                data = encode_bundle(decode_bundle(full, tile_path("entries", number))[:width])
        if data is None:
            msg = f"entry bundle is missing ({self.store.where(key)})"
            raise TamperError(msg, index=number * TILE_WIDTH, tile=key)
        entries = decode_bundle(data, key)
        self._bundles[number] = entries
        return entries

    def locate(self, index: int) -> str:
        """The object that holds entry `index` (its entry bundle), for messages."""
        number = index // TILE_WIDTH
        return tile_path("entries", number, min(TILE_WIDTH, self._size - number * TILE_WIDTH))

    def locate_node(self, level: int, index: int) -> str:
        """The hash tile that holds (or derives) the subtree hash at (level, index)."""
        tile_level, sub = divmod(level, TILE_HEIGHT)
        number = (index << sub) >> TILE_HEIGHT
        return tile_path(tile_level, number, max(self._width(tile_level, number, self._size), 1))

    # -- EvidenceLog ------------------------------------------------------------------------------

    def append(self, entries: Sequence[EvidenceEntry]) -> list[LoggedEntry]:
        """Append a batch: one round of PUTs for the bundles and tiles it touches; durable on return."""
        prepared = []
        for entry in entries:
            canonical = canonical_bytes(entry)
            if len(canonical) > _MAX_BUNDLED:
                msg = f"entry is {len(canonical)} bytes; an entry bundle holds entries up to {_MAX_BUNDLED}"
                raise EntryError(msg)
            prepared.append((canonical, merkle.leaf_hash(canonical), _parse_entry(canonical)))
        if not prepared:
            return []
        with self._lock:
            return self._append(prepared)

    def append_canonical(self, entries: Sequence[bytes]) -> list[LoggedEntry]:
        """Append entries given as canonical bytes (the notary's input), checked in bulk."""
        canonical = [bytes(data) for data in entries]
        for data in canonical:
            if len(data) > _MAX_BUNDLED:
                msg = f"entry is {len(data)} bytes; an entry bundle holds entries up to {_MAX_BUNDLED}"
                raise EntryError(msg)
        parsed = entries_from_canonical(canonical)
        if not parsed:
            return []
        with self._lock:
            return self._append(
                [(data, merkle.leaf_hash(data), entry) for data, entry in zip(canonical, parsed, strict=True)]
            )

    def _append(self, prepared: Sequence[tuple[bytes, bytes, EvidenceEntry]]) -> list[LoggedEntry]:
        old_size = self._size
        frontier = merkle.Frontier(old_size, self._read_nodes(merkle.border(old_size), old_size))
        tiles: dict[tuple[int, int], bytearray] = {}
        bundles: dict[int, list[bytes]] = {}
        logged = []
        for canonical, leaf, entry in prepared:
            index = frontier.size
            number = index // TILE_WIDTH
            if number not in bundles:
                bundles[number] = list(self._bundle(number)) if index % TILE_WIDTH else []
            bundles[number].append(canonical)
            for level, node_index, value in frontier.append(leaf):
                if level % TILE_HEIGHT:
                    continue
                key = (level // TILE_HEIGHT, node_index // TILE_WIDTH)
                if key not in tiles:
                    tiles[key] = bytearray(self._tile(*key) if node_index % TILE_WIDTH else b"")
                tiles[key] += value
            logged.append(LoggedEntry(index, entry, canonical, leaf))
        for number, bundle in sorted(bundles.items()):
            self.store.put(tile_path("entries", number, len(bundle)), encode_bundle(bundle))
        for (level, number), content in sorted(tiles.items(), reverse=True):
            self.store.put(tile_path(level, number, len(content) // _HASH), bytes(content))
        self._size = frontier.size
        self._frontier = frontier
        for key, content in tiles.items():
            self._tiles[key] = bytes(content)
        self._bundles.update(bundles)
        if self._index_built:
            for item in logged:
                self._index(item.index, item.entry)
        return logged

    def _index(self, index: int, entry: EvidenceEntry) -> None:
        self._by_subject[entry.subject].append(index)
        for digest in dict.fromkeys(entry.inputs):
            self._by_input[digest].append(index)
        self._once.setdefault((str(entry.event), entry.subject, entry.actor), index)

    def _ensure_index(self) -> None:
        if self._index_built:
            return
        for item in self.read():
            self._index(item.index, item.entry)
        self._index_built = True

    def append_once(self, entry: EvidenceEntry) -> LoggedEntry:
        """Append unless an entry with the same (event, subject, actor) exists; return the logged one."""
        normalized = _parse_entry(canonical_bytes(entry))
        with self._lock:
            self._ensure_index()
            found = self._once.get((str(normalized.event), normalized.subject, normalized.actor))
            if found is not None:
                return self._get(found)
            return self.append([normalized])[0]

    def size(self) -> int:
        """Number of entries in the log (as of opening, the last append or `refresh`)."""
        return self._size

    def _get(self, index: int) -> LoggedEntry:
        return next(self.read(index, index + 1))

    def read(self, start: int = 0, end: int | None = None) -> Iterator[LoggedEntry]:
        """Entries with start <= index < end, bundle by bundle, with the leaf hash the tiles store."""
        with self._lock:
            stop = self._size if end is None else min(end, self._size)
        position = max(start, 0)
        while position < stop:
            number = position // TILE_WIDTH
            with self._lock:
                bundle = self._bundle(number)
                leaves = self._tile(0, number)
            base = number * TILE_WIDTH
            limit = min(stop, base + TILE_WIDTH)
            while position < limit:
                offset = position - base
                if offset >= len(bundle):
                    msg = f"entry bundle holds {len(bundle)} entries, the log's size needs {limit - base}"
                    raise TamperError(msg, index=position, tile=self.locate(position))
                canonical = bundle[offset]
                try:
                    entry = entry_from_canonical(canonical)
                except EntryError as exc:
                    msg = f"stored entry is not a valid canonical entry: {exc}"
                    raise TamperError(msg, index=position, tile=self.locate(position)) from None
                stored = leaves[offset * _HASH : (offset + 1) * _HASH]
                yield LoggedEntry(position, entry, canonical, stored)
                position += 1

    def read_raw(self, start: int = 0, end: int | None = None) -> Iterator[list[tuple[int, bytes, bytes]]]:
        """(index, canonical bytes, leaf hash from the level-0 tile), one chunk per entry bundle."""
        with self._lock:
            stop = self._size if end is None else min(end, self._size)
        position = max(start, 0)
        while position < stop:
            number = position // TILE_WIDTH
            with self._lock:
                bundle = self._bundle(number)
                leaves = self._tile(0, number)
            base = number * TILE_WIDTH
            limit = min(stop, base + TILE_WIDTH)
            have = min(limit, base + len(bundle))
            chunk = [
                (i, bundle[i - base], leaves[(i - base) * _HASH : (i - base + 1) * _HASH])
                for i in range(position, have)
            ]
            if chunk:
                yield chunk
            if have < limit:
                msg = f"entry bundle holds {len(bundle)} entries, the log's size needs {limit - base}"
                raise TamperError(msg, index=max(have, position), tile=self.locate(max(have, position)))
            position = limit

    def find(self, subject: str) -> list[LoggedEntry]:
        """Entries whose subject is `subject`, in index order."""
        _check_digest(subject)
        with self._lock:
            self._ensure_index()
            indices = list(self._by_subject.get(subject, ()))
        return [self._get(i) for i in indices]

    def by_input(self, subject: str) -> list[LoggedEntry]:
        """Entries that list `subject` among their inputs, in index order."""
        _check_digest(subject)
        with self._lock:
            self._ensure_index()
            indices = list(self._by_input.get(subject, ()))
        return [self._get(i) for i in indices]

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the first `size` entries (default: all), from the tiles."""
        with self._lock:
            size = self._bounded(size)
            if size == 0:
                return merkle.EMPTY_ROOT
            return merkle.Frontier(size, self._read_nodes(merkle.border(size), size)).root()

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Inclusion proof of entry `index` in the tree of `size` entries (default: all)."""
        with self._lock:
            size = self._bounded(size)
            return merkle.inclusion_proof(index, size, self._reader(size))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Consistency proof from the tree of `old_size` entries to `new_size` (default: all)."""
        with self._lock:
            new_size = self._bounded(new_size)
            return merkle.consistency_proof(old_size, new_size, self._reader(new_size))

    def checkpoint(self, signer: Signer | Sequence[Signer], origin: str | None = None) -> str:
        """Sign a checkpoint of the whole log; publish it as `checkpoint` and keep it in the history."""
        signers = [signer] if isinstance(signer, Signer) else list(signer)
        if not signers:
            msg = "a checkpoint needs at least one signer"
            raise EvidenceError(msg)
        with self._lock:
            size = self._size
            root_hash = self._frontier.root() if size else merkle.EMPTY_ROOT
            note = sign_checkpoint(Checkpoint(origin or signers[0].name, size, root_hash), signers)
            data = note.encode("utf-8")
            self.store.put(f"{_HISTORY}{size:020d}-{time.time_ns() // 1000:020d}", data)
            self.store.put(_CHECKPOINT, data, immutable=False)
        return note

    def sync(self) -> None:
        """Nothing to do: an append returns after its objects were written whole."""

    def latest_checkpoint(self) -> str | None:
        """The published `checkpoint` object's text, or None."""
        data = self.store.get(_CHECKPOINT)
        return None if data is None else data.decode("utf-8", errors="replace")

    def close(self) -> None:
        """Close the object store."""
        self.store.close()

    # -- AuditableLog -----------------------------------------------------------------------------

    def node_hashes(self, level: int, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(index, hash) of complete subtrees at `level` as the tiles hold them, start <= index < end."""
        count = self._size >> level
        stop = count if end is None else min(end, count)
        for index in range(max(start, 0), stop):
            with self._lock:
                (value,) = self._read_nodes([(level, index)], self._size)
            yield index, value

    def checkpoints(self) -> list[str]:
        """Every checkpoint in the history, oldest first."""
        return [
            (self.store.get(key) or b"").decode("utf-8", errors="replace")
            for key in self.store.list(_HISTORY)
        ]

    # -- helpers ----------------------------------------------------------------------------------

    def _bounded(self, size: int | None) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            msg = f"tree size {size} is outside the log, which has {self._size} entries"
            raise OutOfRangeError(msg)
        return size

    def __enter__(self) -> TileEvidenceLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TileEvidenceLog({self.store!r})"


def _check_digest(subject: str) -> None:
    if not is_digest(subject):
        msg = f"subjects are 64 lowercase hex characters, got {subject!r}"
        raise EntryError(msg)
