"""How a cleaned document gets its split: a salted hash of its content, unless the source gave
one; then the clean stage's corpus-wide decisions, taken once every document has been read:
which split a near-duplicate cluster lands in, which near copies are dropped, and how much of
the test split overlaps train. Pure NumPy over per-document arrays (row order = stream order).

Split codes are indices into ("test", "val", "train"). `given` marks documents whose split the
source gave (a file/folder name or a `split` column): those never move, and only their train
copies are ever de-duplicated. Usage: `d = decide(hashes, codes, given, pairs, "near", True)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.data.near_dup import components
from components.errors import GruflowError
from components.params import Split

BY_CODE = ("test", "val", "train")
TEST, VAL, TRAIN = 0, 1, 2
ID_HEX = 20  # doc_id: the first 20 hex digits of the cleaned text's SHA-256
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def split_codes(doc_ids: Iterable[bytes], cfg: Split) -> np.ndarray:
    """Stable per-document split (index into BY_CODE): the first 64 bits of
    sha256(f"{seed}:{doc_id}") as a fraction of 2**64 against the test and val fractions, so a
    document's split depends only on its id and the seed."""
    salt = f"{cfg.seed}:".encode()
    head = np.frombuffer(b"".join([sha256(salt + i).digest()[:8] for i in doc_ids]), ">u8")
    u = head.astype(np.float64) / 2**64  # == int.from_bytes(head, "big") / 2**64, exactly
    return np.where(
        u < cfg.test_fraction, 0, np.where(u < cfg.test_fraction + cfg.val_fraction, 1, 2)
    ).astype(np.int8)


def content_ids(text: pa.Array, cfg: Split) -> tuple[pa.Array, np.ndarray, pa.Array]:
    """doc_id (hex SHA-256 prefix of the UTF-8 text), the digest's first 64 bits (the
    exact-duplicate key) and the hashed split, vectorised but for one hash call each."""
    n = len(text)
    values = text.cast(pa.binary()).to_pylist()
    digests = np.frombuffer(
        b"".join([sha256(v).digest()[: ID_HEX // 2] for v in values]), np.uint8
    ).reshape(n, ID_HEX // 2)
    hexed = np.empty((n, ID_HEX), np.uint8)
    hexed[:, 0::2], hexed[:, 1::2] = _HEX_DIGITS[digests >> 4], _HEX_DIGITS[digests & 15]
    data = hexed.tobytes()
    ids = pa.StringArray.from_buffers(
        n, pa.py_buffer(np.arange(0, ID_HEX * (n + 1), ID_HEX, dtype=np.int32)), pa.py_buffer(data)
    )
    hashes = np.frombuffer(digests[:, :8].tobytes(), ">u8").astype(np.uint64)
    codes = split_codes((data[i : i + ID_HEX] for i in range(0, len(data), ID_HEX)), cfg)
    return ids, hashes, pc.take(pa.array(BY_CODE), pa.array(codes))


@dataclass
class Decision:
    codes: np.ndarray  # final split code per document
    keep: np.ndarray  # False: dropped as a near copy


def decide(
    hashes: np.ndarray,
    codes: np.ndarray,
    given: np.ndarray,
    pairs: np.ndarray,
    close: np.ndarray,
    dedup: str,
    group: bool,
) -> Decision:
    """Hashed documents joined by near-duplicate pairs form clusters; with `group` each
    cluster takes the split of its representative (the member with the smallest content hash,
    so neither file nor stream order matters). With dedup `near` only the representative of
    each cluster is kept; for given splits the clusters are formed inside train only. `pairs`
    are the candidate pairs grouped into one split, `close` marks those at the duplicate
    threshold (see near_dup.GROUP_MARGIN)."""
    n = len(hashes)
    codes = codes.copy()
    both = ~given[pairs[:, 0]] & ~given[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
    hashed_pairs = pairs[both]
    if group and len(hashed_pairs):
        codes = np.where(given, codes, codes[components(n, hashed_pairs, hashes)])
    keep = np.ones(n, bool)
    if dedup == "near" and len(pairs):
        train_given = given & (codes == TRAIN)
        inside_train = train_given[pairs[:, 0]] & train_given[pairs[:, 1]]
        rep = components(n, pairs[(both | inside_train) & close], hashes)
        keep = rep == np.arange(n)
    return Decision(codes, keep)


def overlap(
    hashes: np.ndarray,
    codes: np.ndarray,
    keep: np.ndarray,
    pairs: np.ndarray | None,
) -> dict:
    """Kept test documents with an exact copy in kept train, and with a near duplicate there
    (a verified pair, or an exact copy); `near` is None when near-duplicates were not searched."""
    test, train = keep & (codes == TEST), keep & (codes == TRAIN)
    n_test = int(test.sum())
    exact = test & np.isin(hashes, hashes[train])

    def share(mask: np.ndarray) -> dict:
        docs = int(mask.sum())
        return {"documents": docs, "fraction": docs / n_test if n_test else 0.0}

    result = {"test_documents": n_test, "exact": share(exact), "near": None}
    if pairs is not None:
        near = exact.copy()
        for a, b in ((0, 1), (1, 0)):
            cross = test[pairs[:, a]] & train[pairs[:, b]]
            near[pairs[cross, a]] = True
        result["near"] = share(near)
    return result


def gate_overlap(leak: dict) -> None:
    """A hashed split must not leak: stop when too many test documents have a copy in train
    (a source's own split is the user's decision: reported, never enforced)."""
    if not leak["enforced"]:
        return
    for kind in ("exact", "near"):
        got = leak[kind]
        if got is not None and got["fraction"] > leak["max_fraction"]:
            raise GruflowError(
                f"clean: {got['documents']} of {leak['test_documents']} test documents "
                f"({got['fraction']:.1%}) have {'an exact' if kind == 'exact' else 'a near'} "
                f"duplicate in train, above split.max_test_train_overlap="
                f"{leak['max_fraction']} — set split.group_near_duplicates: true (or "
                "clean.dedup: near), or raise the limit"
            )
