"""The RFC 9162 (Certificate Transparency v2) Merkle tree: hashes, proofs and their verifiers.

Proofs are built from hashes of *complete* subtrees, addressed as (level, index): the subtree at
level L and index i covers leaves [i * 2**L, (i + 1) * 2**L). A store keeps those hashes as it appends
(see `Frontier`), like tlog tiles do, so a root or a proof costs O(log n) reads whatever the log size.
Any other subtree the RFC's recursion needs is the right fold of at most log2(n) complete ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from tidm.evidence.errors import OutOfRangeError, ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "NodeReader",
    "border",
    "consistency_proof",
    "decompose",
    "inclusion_proof",
    "leaf_hash",
    "memory_reader",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeReader = Callable[[Sequence[tuple[int, int]]], Sequence[bytes]]
"""Reads the hashes of complete subtrees, given as (level, index) pairs, in the order asked."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 ‖ data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of the tree over `leaf_hashes` (SHA-256 of the empty string for no leaves).

    Pairing neighbours level by level and promoting an odd last node gives the same tree as the RFC's
    largest-power-of-two split, in O(n) hashes and without recursion.
    """
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def border(size: int) -> list[tuple[int, int]]:
    """The complete subtrees, left to right, whose right fold is the root of a tree of `size` leaves."""
    _check_size(size)
    coords = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            coords.append((level, start >> level))
            start += 1 << level
    return coords


def decompose(start: int, end: int) -> list[tuple[int, int]]:
    """The complete subtrees, left to right, that exactly cover leaves [start, end), largest first."""
    if not 0 <= start <= end:
        msg = f"invalid leaf range [{start}, {end})"
        raise OutOfRangeError(msg)
    coords = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start:
            level = min(level, (start & -start).bit_length() - 1)
        coords.append((level, start >> level))
        start += 1 << level
    return coords


class Frontier:
    """The right border of a growing tree: enough to append leaves and compute the root.

    `append` returns every complete subtree the new leaf completes, so a store can persist them.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        _check_size(size)
        if len(hashes) != size.bit_count():  # one border subtree per bit set: len(border(size))
            msg = f"a tree of {size} leaves has {size.bit_count()} border hashes, got {len(hashes)}"
            raise OutOfRangeError(msg)
        self._size = size
        self._stack = list(hashes)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf hash; return the (level, index, hash) of each subtree it completes."""
        index, level, current = self._size, 0, leaf
        created = [(0, index, leaf)]
        self._stack.append(leaf)
        while index & 1:
            current = node_hash(self._stack[-2], current)
            self._stack[-2:] = [current]
            index >>= 1
            level += 1
            created.append((level, index, current))
        self._size += 1
        return created

    def extend(self, leaves: Sequence[bytes]) -> list[tuple[int, int, list[bytes]]]:
        """Append many leaf hashes; return, per level, (level, first index, hashes) of the subtrees
        they complete, in index order (level 0 being the leaves).

        The same subtrees as `append` one leaf at a time, hashed level by level: one pass per level
        over a list instead of a Python loop per leaf.
        """
        if not leaves:
            return []
        old_size = self._size
        new_size = old_size + len(leaves)
        # Border hashes by level: the old border has one node at each level whose bit is set in size.
        border_by_level: dict[int, bytes] = {}
        position = 0
        for level in range(old_size.bit_length() - 1, -1, -1):
            if old_size >> level & 1:
                border_by_level[level] = self._stack[position]
                position += 1
        created: list[tuple[int, int, list[bytes]]] = []
        level, start, nodes = 0, old_size, list(leaves)
        sha256 = hashlib.sha256
        while nodes:
            created.append((level, start, nodes))
            row, row_start = nodes, start
            if start & 1:
                # The first new node is a right child: its left sibling is the old border node.
                row, row_start = [border_by_level[level], *nodes], start - 1
            parents = [sha256(b"\x01" + row[i] + row[i + 1]).digest() for i in range(0, len(row) - 1, 2)]
            level, start, nodes = level + 1, row_start >> 1, parents
        stack = []
        for level in range(new_size.bit_length() - 1, -1, -1):
            if new_size >> level & 1:
                index = (new_size >> level) - 1
                if level < len(created) and index >= created[level][1]:
                    _, first, hashes = created[level]
                    stack.append(hashes[index - first])
                else:
                    stack.append(border_by_level[level])
        self._stack = stack
        self._size = new_size
        return created

    def hashes(self) -> tuple[bytes, ...]:
        """The border hashes (what `Frontier(size, hashes)` takes to resume)."""
        return tuple(self._stack)

    def root(self) -> bytes:
        """The MTH of the leaves appended so far."""
        if not self._stack:
            return EMPTY_ROOT
        return _fold(self._stack)


def memory_reader(leaf_hashes: Sequence[bytes]) -> NodeReader:
    """A `NodeReader` over leaf hashes held in memory (builds every complete subtree once, O(n))."""
    levels = [list(leaf_hashes)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])

    def read(coords: Sequence[tuple[int, int]]) -> list[bytes]:
        try:
            return [levels[level][index] for level, index in coords]
        except IndexError:
            msg = f"subtree outside a tree of {len(leaf_hashes)} leaves: {list(coords)}"
            raise OutOfRangeError(msg) from None

    return read


def inclusion_proof(index: int, size: int, source: Sequence[bytes] | NodeReader) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[size]), leaf to root.

    `source` is either the leaf hashes or a `NodeReader` over stored complete-subtree hashes.
    """
    _check_size(size)
    if not 0 <= index < size:
        msg = f"leaf index {index} is outside a tree of {size} leaves"
        raise OutOfRangeError(msg)
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
    ranges.reverse()
    return _range_hashes(ranges, size, source)


def consistency_proof(old_size: int, new_size: int, source: Sequence[bytes] | NodeReader) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(old_size, D[new_size]); empty when old_size is 0 or equals new_size."""
    _check_size(old_size)
    _check_size(new_size)
    if old_size > new_size:
        msg = f"cannot prove consistency from size {old_size} to the smaller size {new_size}"
        raise OutOfRangeError(msg)
    if old_size == 0:
        return []
    ranges: list[tuple[int, int]] = []
    m, lo, hi, complete = old_size, 0, new_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            m, lo, complete = m - k, lo + k, False
    if not complete:
        ranges.append((lo, hi))
    ranges.reverse()
    return _range_hashes(ranges, new_size, source)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> None:
    """Check an inclusion proof exactly as RFC 9162 §2.1.3.2 says; raise `ProofError` if it fails."""
    _check_hashes([leaf, root_hash, *proof])
    if not 0 <= index < size:
        msg = f"leaf index {index} is outside a tree of {size} leaves"
        raise ProofError(msg, index=index)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            msg = "inclusion proof is longer than the tree is deep"
            raise ProofError(msg, index=index)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        msg = "inclusion proof is shorter than the tree is deep"
        raise ProofError(msg, index=index)
    if r != root_hash:
        msg = "inclusion proof does not lead to the root hash"
        raise ProofError(msg, index=index)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check a consistency proof exactly as RFC 9162 §2.1.4.2 says; raise `ProofError` if it fails.

    Beyond the RFC (which covers 0 < old_size < new_size): equal sizes need an empty proof and equal
    roots; the empty tree is a prefix of every tree, with an empty proof and the empty-tree root.
    """
    _check_hashes([old_root, new_root, *proof])
    if not 0 <= old_size <= new_size:
        msg = f"sizes {old_size} -> {new_size} do not describe an append-only log"
        raise ProofError(msg)
    if old_size == new_size or old_size == 0:
        if proof:
            msg = f"consistency proof from size {old_size} to {new_size} must be empty"
            raise ProofError(msg)
        expected = new_root if old_size == new_size else EMPTY_ROOT
        if old_root != expected:
            msg = f"root of the tree of size {old_size} does not match"
            raise ProofError(msg)
        return
    if not proof:
        msg = "consistency proof is empty"
        raise ProofError(msg)
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            msg = "consistency proof is longer than the tree is deep"
            raise ProofError(msg)
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        msg = "consistency proof is shorter than the tree is deep"
        raise ProofError(msg)
    if fr != old_root:
        msg = f"consistency proof does not lead to the root of size {old_size}"
        raise ProofError(msg)
    if sr != new_root:
        msg = f"consistency proof does not lead to the root of size {new_size}"
        raise ProofError(msg)


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _fold(hashes: Sequence[bytes]) -> bytes:
    current = hashes[-1]
    for left in reversed(hashes[:-1]):
        current = node_hash(left, current)
    return current


def _range_hashes(
    ranges: Sequence[tuple[int, int]], size: int, source: Sequence[bytes] | NodeReader
) -> list[bytes]:
    """The MTH of each leaf range, reading all the complete subtrees they need in one batch."""
    if isinstance(source, Sequence):
        if len(source) < size:
            msg = f"{len(source)} leaf hashes given for a tree of {size} leaves"
            raise OutOfRangeError(msg)
        source = memory_reader(source[:size])
    parts = [decompose(lo, hi) for lo, hi in ranges]
    flat = [coord for part in parts for coord in part]
    hashes = list(source(flat))
    if len(hashes) != len(flat):
        msg = f"node reader returned {len(hashes)} hashes for {len(flat)} subtrees"
        raise OutOfRangeError(msg)
    result = []
    position = 0
    for part in parts:
        result.append(_fold(hashes[position : position + len(part)]))
        position += len(part)
    return result


def _check_size(size: int) -> None:
    if size < 0:
        msg = f"tree size must not be negative, got {size}"
        raise OutOfRangeError(msg)


def _check_hashes(hashes: Iterable[bytes]) -> None:
    for value in hashes:
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            msg = f"hashes in proofs are {HASH_SIZE} bytes, got {value!r:.80}"
            raise ProofError(msg)
