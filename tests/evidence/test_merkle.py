"""RFC 9162 Merkle tree: known vectors, the RFC's 7-leaf example, a reference model, and properties."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidm.evidence import OutOfRangeError, ProofError
from tidm.evidence.merkle import (
    EMPTY_ROOT,
    Frontier,
    border,
    consistency_proof,
    decompose,
    inclusion_proof,
    leaf_hash,
    memory_reader,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# Leaf inputs and roots of the CT / transparency-dev test vectors (transparency-dev/merkle testonly).
LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
LEAVES = [leaf_hash(data) for data in LEAF_INPUTS]

# Known proofs for the same tree (transparency-dev/merkle proof/verify_test.go).
INCLUSION_VECTORS = [
    (0, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (5, 8, ["bc1a0643", "ca854ea1", "d37ee418"]),
    (2, 3, ["fac54203"]),
    (1, 5, ["6e340b9c", "5f083f0a", "bc1a0643"]),
]
CONSISTENCY_VECTORS = [
    (1, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (6, 8, ["0ebc5d34", "ca854ea1", "d37ee418"]),
    (2, 5, ["5f083f0a", "bc1a0643"]),
    (6, 7, ["0ebc5d34", "b08693ec", "d37ee418"]),
]


# -- a reference model written straight from RFC 9162 §2.1 (recursive, slow, obviously right) --------


def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(ref_mth(leaves[:k]), ref_mth(leaves[k:]))


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, leaves[:k], complete), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def make_leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


# -- known answers -------------------------------------------------------------------------------


def test_hashing_is_domain_separated() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest() == ROOTS[0]


@pytest.mark.parametrize("size", range(9))
def test_known_roots(size: int) -> None:
    assert root(LEAVES[:size]) == ROOTS[size]
    frontier = Frontier()
    for leaf in LEAVES[:size]:
        frontier.append(leaf)
    assert frontier.root() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "prefixes"), INCLUSION_VECTORS)
def test_known_inclusion_proofs(index: int, size: int, prefixes: list[str]) -> None:
    proof = inclusion_proof(index, size, LEAVES)
    assert [p.hex()[:8] for p in proof] == prefixes
    verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])
    # The same corruptions the Go library probes with must all fail.
    probes = [
        (index + 1, size, LEAVES[index], proof, ROOTS[size]),
        (index ^ 2, size, LEAVES[index], proof, ROOTS[size]),
        (index, size * 2, LEAVES[index], proof, ROOTS[size]),
        (index, size, leaf_hash(b"WrongLeaf"), proof, ROOTS[size]),
        (index, size, LEAVES[index], proof, EMPTY_ROOT),
        (index, size, LEAVES[index], [*proof, ROOTS[size]], ROOTS[size]),
        (index, size, LEAVES[index], [ROOTS[size], *proof], ROOTS[size]),
    ]
    if index > 0:
        probes.append((index - 1, size, LEAVES[index], proof, ROOTS[size]))
    for probe in probes:
        with pytest.raises(ProofError):
            verify_inclusion(probe[2], probe[0], probe[1], probe[3], probe[4])


@pytest.mark.parametrize(("old", "new", "prefixes"), CONSISTENCY_VECTORS)
def test_known_consistency_proofs(old: int, new: int, prefixes: list[str]) -> None:
    proof = consistency_proof(old, new, LEAVES)
    assert [p.hex()[:8] for p in proof] == prefixes
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)
    probes = [
        (old - 1, new, ROOTS[old], ROOTS[new], proof),
        (old + 1, new, ROOTS[old], ROOTS[new], proof),
        (old, new * 2, ROOTS[old], ROOTS[new], proof),
        (old, new, ROOTS[new], ROOTS[old], proof),
        (old, new, ROOTS[old], ROOTS[new], []),
        (old, new, ROOTS[old], ROOTS[new], [*proof, ROOTS[old]]),
        (old, new, ROOTS[old], ROOTS[new], [ROOTS[new], *proof]),
        (old, new, ROOTS[old], ROOTS[new], [proof[0], *proof]),
    ]
    for probe in probes:
        with pytest.raises(ProofError):
            verify_consistency(*probe)


def test_rfc9162_seven_leaf_example() -> None:
    """RFC 9162 §2.1.5: the tree over d0..d6 and the proofs it lists."""
    d = [leaf_hash(f"d{i}".encode()) for i in range(7)]
    a, b, c, dd, e, f, j = d
    g, h, i = node_hash(a, b), node_hash(c, dd), node_hash(e, f)
    k, l_ = node_hash(g, h), node_hash(i, j)
    tree_root = node_hash(k, l_)
    assert root(d) == tree_root

    assert inclusion_proof(0, 7, d) == [b, h, l_]
    assert inclusion_proof(3, 7, d) == [c, g, l_]
    assert inclusion_proof(4, 7, d) == [f, j, k]
    assert inclusion_proof(6, 7, d) == [i, k]
    for index, leaf in enumerate(d):
        verify_inclusion(leaf, index, 7, inclusion_proof(index, 7, d), tree_root)

    hash0, hash1, hash2 = root(d[:3]), root(d[:4]), root(d[:6])
    assert hash1 == k
    assert consistency_proof(3, 7, d) == [c, dd, g, l_]
    assert consistency_proof(4, 7, d) == [l_]
    assert consistency_proof(6, 7, d) == [i, j, k]
    verify_consistency(3, 7, hash0, tree_root, [c, dd, g, l_])
    verify_consistency(4, 7, hash1, tree_root, [l_])
    verify_consistency(6, 7, hash2, tree_root, [i, j, k])


def test_trivial_consistency_cases() -> None:
    r = ROOTS[5]
    verify_consistency(5, 5, r, r, [])
    verify_consistency(0, 5, EMPTY_ROOT, r, [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert consistency_proof(0, 5, LEAVES) == []
    assert consistency_proof(5, 5, LEAVES) == []
    with pytest.raises(ProofError):
        verify_consistency(5, 5, r, ROOTS[4], [])
    with pytest.raises(ProofError):
        verify_consistency(5, 5, r, r, [EMPTY_ROOT])
    with pytest.raises(ProofError):
        verify_consistency(0, 5, r, r, [])
    with pytest.raises(ProofError):
        verify_consistency(6, 5, r, r, [r])


def test_bad_requests_and_bad_hash_sizes() -> None:
    with pytest.raises(OutOfRangeError):
        inclusion_proof(8, 8, LEAVES)
    with pytest.raises(OutOfRangeError):
        inclusion_proof(0, 9, LEAVES)
    with pytest.raises(OutOfRangeError):
        consistency_proof(5, 4, LEAVES)
    with pytest.raises(OutOfRangeError):
        consistency_proof(-1, 4, LEAVES)
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[0], 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError):
        verify_inclusion(b"short", 0, 1, [], LEAVES[0])
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[0], 0, 2, [b""], ROOTS[2])


def test_border_and_decompose() -> None:
    assert border(0) == []
    assert border(7) == [(2, 0), (1, 2), (0, 6)]
    assert border(8) == [(3, 0)]
    assert decompose(4, 7) == [(1, 2), (0, 6)]
    assert decompose(0, 7) == border(7)
    assert decompose(3, 3) == []


def test_frontier_reports_every_completed_subtree() -> None:
    frontier = Frontier()
    created: dict[tuple[int, int], bytes] = {}
    leaves = make_leaves(13)
    for leaf in leaves:
        for level, index, value in frontier.append(leaf):
            created[level, index] = value
    reader = memory_reader(leaves)
    assert sorted(created) == sorted((lv, ix) for lv in range(4) for ix in range(13 >> lv))
    assert all(reader([coord])[0] == value for coord, value in created.items())
    resumed = Frontier(13, [created[c] for c in border(13)])
    resumed.append(leaf_hash(b"next"))
    assert resumed.root() == root([*leaves, leaf_hash(b"next")])
    with pytest.raises(OutOfRangeError):
        Frontier(13, [])


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 70), st.lists(st.integers(0, 40), min_size=1, max_size=4))
def test_extend_completes_the_subtrees_append_does(before: int, batches: list[int]) -> None:
    leaves = make_leaves(before + sum(batches))
    one, many = Frontier(), Frontier()
    for leaf in leaves[:before]:
        one.append(leaf)
        many.append(leaf)
    position = before
    for count in batches:
        expected = {
            (level, index): value
            for leaf in leaves[position : position + count]
            for level, index, value in one.append(leaf)
        }
        got = {
            (level, first + offset): value
            for level, first, values in many.extend(leaves[position : position + count])
            for offset, value in enumerate(values)
        }
        assert got == expected
        assert (many.size, many.hashes(), many.root()) == (one.size, one.hashes(), one.root())
        position += count


@pytest.mark.parametrize("size", range(1, 40))
def test_matches_reference_model_exhaustively(size: int) -> None:
    leaves = make_leaves(size)
    reader = memory_reader(leaves)
    assert root(leaves) == ref_mth(leaves)
    for index in range(size):
        assert inclusion_proof(index, size, reader) == ref_path(index, leaves)
    for old in range(1, size + 1):
        assert consistency_proof(old, size, reader) == ref_subproof(old, leaves, True)


# -- properties ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=1, max_value=300))
def test_every_proof_verifies(size: int) -> None:
    leaves = make_leaves(size)
    reader = memory_reader(leaves)
    tree_root = root(leaves)
    prefix_roots = [root(leaves[:m]) for m in range(size + 1)]
    for index in range(size):
        verify_inclusion(leaves[index], index, size, inclusion_proof(index, size, reader), tree_root)
    for old in range(size + 1):
        verify_consistency(old, size, prefix_roots[old], tree_root, consistency_proof(old, size, reader))


@st.composite
def mutated(draw: st.DrawFn, proof: list[bytes]) -> list[bytes]:
    """`proof` with one change: a flipped bit, an element dropped, added or duplicated, or truncation."""
    kinds = ["extend", "prepend"] + (["flip", "drop", "truncate", "duplicate"] if proof else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "extend":
        return [*proof, draw(st.binary(min_size=32, max_size=32))]
    if kind == "prepend":
        return [draw(st.binary(min_size=32, max_size=32)), *proof]
    position = draw(st.integers(min_value=0, max_value=len(proof) - 1))
    if kind == "flip":
        element = bytearray(proof[position])
        element[draw(st.integers(0, 31))] ^= 1 << draw(st.integers(0, 7))
        return [*proof[:position], bytes(element), *proof[position + 1 :]]
    if kind == "drop":
        return proof[:position] + proof[position + 1 :]
    if kind == "truncate":
        return proof[:position]
    return [*proof[: position + 1], proof[position], *proof[position + 1 :]]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), size=st.integers(min_value=1, max_value=300))
def test_altered_inclusion_proof_fails(data: st.DataObject, size: int) -> None:
    leaves = make_leaves(size)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = inclusion_proof(index, size, leaves)
    bad = data.draw(mutated(proof))
    with pytest.raises(ProofError):
        verify_inclusion(leaves[index], index, size, bad, root(leaves))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), size=st.integers(min_value=2, max_value=300))
def test_altered_consistency_proof_fails(data: st.DataObject, size: int) -> None:
    leaves = make_leaves(size)
    old = data.draw(st.integers(min_value=1, max_value=size - 1))
    proof = consistency_proof(old, size, leaves)
    bad = data.draw(mutated(proof))
    with pytest.raises(ProofError):
        verify_consistency(old, size, root(leaves[:old]), root(leaves), bad)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), size=st.integers(min_value=2, max_value=300))
def test_altered_roots_fail(data: st.DataObject, size: int) -> None:
    leaves = make_leaves(size)
    old = data.draw(st.integers(min_value=1, max_value=size - 1))
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    other = leaf_hash(b"not a root")
    with pytest.raises(ProofError):
        verify_inclusion(leaves[index], index, size, inclusion_proof(index, size, leaves), other)
    with pytest.raises(ProofError):
        verify_consistency(old, size, other, root(leaves), consistency_proof(old, size, leaves))
    with pytest.raises(ProofError):
        verify_consistency(old, size, root(leaves[:old]), other, consistency_proof(old, size, leaves))
