"""Near-duplicate detection: MinHash signatures (NumPy, vectorised per batch) and LSH banding.

Shingles are character n-grams of the lower-cased text with blanks collapsed, so the same
rule works for text with spaces and without (Chinese, Japanese). `signatures` runs on a batch
in a worker thread; `NearIndex` keeps every kept document's signature (256 B) and band keys
(100 B) in temp files (memory: their layout) and, once the corpus has been read, returns the
verified pairs: documents whose estimated Jaccard similarity reaches the threshold. Usage:
`index = NearIndex(0.8); index.add(*signatures(text, 5)); pairs, sim = index.pairs()`.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NUM_PERM = 128
BANDS, ROWS = 25, 5  # P(candidate) = 1-(1-s^5)^25: 0.99995 at s=0.8, 0.06 at s=0.3
# Within an LSH bucket each document is compared with the LAG documents before it (ordered by
# band key, then row): buckets of many copies cost O(n) pairs, not O(n^2); 25 bands give any
# true pair many chances.
LAG = 8
# Bucket positions verified at once, per thread: their rows' signatures (256 B each, read once)
# and each lag's pairs gathered from them (~14 MB in all); the number of candidates grows with
# the corpus, so memory would grow with it if a band were verified at once.
VERIFY_CHUNK = 1 << 14
# Reads of the signature file: rows at most READ_GAP apart share one read (reading 32 unused
# signatures, 8 KB, costs less than another system call), within blocks of READ_SPAN rows (2 MB).
READ_GAP = 32
READ_SPAN = 1 << 13
# The estimate's standard deviation is sqrt(J(1-J)/128), 0.035 at J = 0.8: pairs within
# GROUP_MARGIN below the threshold still share a split (a true 0.8 pair then does with
# probability ~0.998); only pairs at or above it count as duplicates (dedup, overlap).
GROUP_MARGIN = 0.1
# Signatures cover the first this-many characters: a 50 MB line must not become 50 M shingles.
MAX_CHARS = 200_000
# Signatures of a batch are computed this many characters of documents at a time: their
# temporaries (~40 B per character) stay a few MB whatever the batch's text.
SIG_CHARS = 1 << 16
_BLANKS = re.compile(r"\s+")
_RNG = np.random.default_rng(20240521)  # fixed: signatures must mean the same on every run
_A = _RNG.integers(1, 2**63, NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
_B = _RNG.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
_BAND_MIX = _RNG.integers(1, 2**63, BANDS * ROWS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_PRIME = np.uint64(0x100000001B3)  # FNV's 64-bit prime, the rolling n-gram hash's base


def shingles(text: str, n: int) -> set[str]:
    """The plain definition of a document's shingles (the reference the tests compare with)."""
    norm = _BLANKS.sub(" ", text[:MAX_CHARS].lower()).strip()
    return {norm} if len(norm) <= n else {norm[i : i + n] for i in range(len(norm) - n + 1)}


def jaccard(a: str, b: str, n: int) -> float:
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / max(len(sa | sb), 1)


def _shingle_hashes(text: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hash of every n-gram of every normalised document, and each document's first
    position in that array. Documents are joined with n NULs (clean removed every control
    character), so no n-gram spans two documents and a document shorter than n is one n-gram."""
    norm = pc.utf8_trim_whitespace(
        pc.replace_substring_regex(
            pc.utf8_lower(pc.utf8_slice_codeunits(text, 0, MAX_CHARS)), r"\s+", " "
        )
    )
    docs = norm.to_pylist()
    cp = np.frombuffer(("\0" * n).join(docs).encode("utf-32-le") + b"\0" * 4 * n, np.uint32).astype(
        np.uint64
    )
    lengths = np.fromiter((len(d) for d in docs), np.int64, count=len(docs))
    starts = np.concatenate([[0], np.cumsum(lengths + n)[:-1]])
    h = np.zeros(len(cp) - n, np.uint64)
    for k in range(n):  # polynomial rolling hash, wrapping at 2**64
        h *= _PRIME
        h += cp[k : len(cp) - n + k]
    # splitmix64's finaliser: multiply-shift permutations are min-wise enough only on keys
    # that look random (on the raw rolling hash they under-estimated Jaccard by ~0.07)
    for shift, mult in ((30, _M1), (27, _M2)):
        h ^= h >> np.uint64(shift)
        h *= mult
    h ^= h >> np.uint64(31)
    count = np.maximum(lengths - n + 1, 1)  # n-grams per document
    take = np.repeat(starts - np.concatenate([[0], np.cumsum(count)[:-1]]), count)
    return h[np.arange(int(count.sum())) + take], np.concatenate([[0], np.cumsum(count)[:-1]])


def signatures(text: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, NUM_PERM) uint32 MinHash signatures and (N, BANDS) uint64 LSH band keys. Each
    permutation is a multiply-shift hash (a*h + b mod 2**64) >> 32 of the mixed n-gram hash;
    NumPy releases the GIL, so batches run in parallel threads."""
    sig = np.empty((len(text), NUM_PERM), np.uint32)
    if len(text) == 0:
        return sig, np.empty((0, BANDS), np.uint64)
    chars = np.cumsum(pc.utf8_length(text).to_numpy(zero_copy_only=False))
    start = 0
    while start < len(text):  # documents of up to SIG_CHARS characters at a time (memory)
        end = max(start + 1, int(np.searchsorted(chars, chars[start] + SIG_CHARS, "right")))
        end = min(end, len(text))
        h, first = _shingle_hashes(text.slice(start, end - start), n)
        tmp = np.empty_like(h)
        for k in range(NUM_PERM):
            np.multiply(h, _A[k], out=tmp)
            tmp += _B[k]
            tmp >>= np.uint64(32)
            sig[start:end, k] = np.minimum.reduceat(tmp, first)
        start = end
    mixed = sig[:, : BANDS * ROWS].astype(np.uint64) * _BAND_MIX
    return sig, mixed.reshape(len(text), BANDS, ROWS).sum(axis=2)


class NearIndex:
    """Signatures and band keys of the documents added so far, in row order, in two temp files
    (256 and 100 bytes per document; memory holds one int per batch). Signatures keep
    the low 16 bits of each minimum (b-bit MinHash: two different minima agree by chance with
    odds 2**-16, which the Jaccard estimate can ignore) and band keys 32 bits (a chance
    collision only adds a candidate, which verification rejects)."""

    def __init__(self, threshold: float, folder: Path | None = None) -> None:
        self.threshold = threshold
        # signatures wait in an (already unlinked) temp file, read back row by row to verify
        self.spill = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (closed in pairs)
        # band keys too, band-major per batch: pairs() reads one band's column at a time
        self.key_spill = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (closed in pairs)
        self.rows = 0
        self.batches: list[int] = []  # rows per added batch (the key file's layout)

    def add(self, sigs: np.ndarray, keys: np.ndarray) -> None:
        self.spill.write(sigs.astype(np.uint16).tobytes())
        self.key_spill.write(np.ascontiguousarray(keys.astype(np.uint32).T).tobytes())
        self.rows += len(sigs)
        self.batches.append(len(sigs))

    def _band(self, band: int) -> np.ndarray:
        """One band's keys of every row, in row order, read from the key file."""
        fd, parts, offset = self.key_spill.fileno(), [], 0
        for rows in self.batches:
            parts.append(os.pread(fd, 4 * rows, offset + 4 * rows * band))
            offset += 4 * rows * BANDS
        return np.frombuffer(b"".join(parts), np.uint32)

    def pairs(self, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(P, 2) row pairs i < j that share an LSH bucket and whose signatures agree on at
        least `threshold - GROUP_MARGIN` of the permutations, sorted, and that agreement (the
        Jaccard estimate) of each. Bands run on `threads` threads (sorts, reads and compares
        release the GIL); memory holds a band's bucketed rows and VERIFY_CHUNK positions'
        signatures per thread and the pairs verified so far, never every candidate of every
        band. The result is the union over bands of pairs whose agreement does not depend on
        the band: the same on any thread count and chunk size."""
        self.spill.flush()
        self.key_spill.flush()
        self._kept, self._similar = np.empty(0, np.int64), np.empty(0)
        self._lock = threading.Lock()
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for _ in pool.map(self._band_pairs, range(BANDS)):
                pass  # each band merges its pairs itself, as soon as it is done
        self.spill.close()
        self.key_spill.close()
        n = max(self.rows, 1)
        return np.stack([self._kept // n, self._kept % n], axis=1), self._similar

    def _band_pairs(self, band: int) -> None:
        """Verify one band's candidates: each row of a shared bucket paired with the LAG rows
        before it in key order. Buckets are walked VERIFY_CHUNK positions at a time and each
        row's signature is read once per band (not once per pair it is in)."""
        n, least = max(self.rows, 1), self.threshold - GROUP_MARGIN
        order, keys = _bucketed(self._band(band))
        codes, agree = [], []
        for start in range(0, len(order), VERIFY_CHUNK):  # temporaries independent of corpus size
            stop, end = (
                min(start + VERIFY_CHUNK, len(order)),
                min(start + VERIFY_CHUNK + LAG, len(order)),
            )
            sig = self._read_any(order[start:end])
            for lag in range(1, LAG + 1):
                top = max(start, min(stop, len(order) - lag))  # pairs (p, p + lag), p < top
                a = start + np.flatnonzero(keys[start + lag : top + lag] == keys[start:top])
                ra, rb = order[a], order[a + lag]
                code = np.minimum(ra, rb) * n + np.maximum(ra, rb)
                new = ~_contains(self._kept, code)  # verified in a band already merged
                a, code = a[new] - start, code[new]
                similar = (sig[a] == sig[a + lag]).mean(axis=1)
                codes.append(code[similar >= least])
                agree.append(similar[similar >= least])
        with self._lock:  # a pair found by two bands has the same agreement in both
            kept = np.concatenate([self._kept, *codes])
            similar = np.concatenate([self._similar, *agree])
            kept, first = np.unique(kept, return_index=True)
            self._kept, self._similar = kept, similar[first]

    def _read_any(self, rows: np.ndarray) -> np.ndarray:
        """Signatures of distinct rows in any order."""
        out = np.empty((len(rows), NUM_PERM), np.uint16)
        if len(rows):
            by_row = np.argsort(rows)
            out[by_row] = self._read(rows[by_row])
        return out

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Signatures of the given sorted distinct rows, read from the temp file: one read per
        run of rows at most READ_GAP apart, a READ_SPAN-row block (2 MB) at a time (plain
        reads, so the file's pages never count as this process's memory)."""
        out = np.empty((len(rows), NUM_PERM), np.uint16)
        blocks = np.flatnonzero(np.diff(rows // READ_SPAN)) + 1
        for s, e in zip([0, *blocks.tolist()], [*blocks.tolist(), len(rows)], strict=True):
            out[s:e] = self._read_block(rows[s:e])
        return out

    def _read_block(self, rows: np.ndarray) -> np.ndarray:
        size, fd = NUM_PERM * 2, self.spill.fileno()
        cut = np.flatnonzero(np.diff(rows) > READ_GAP) + 1
        first, last = rows[np.append(0, cut)], rows[np.append(cut - 1, len(rows) - 1)] + 1
        data = b"".join(
            [
                os.pread(fd, (e - s) * size, s * size)
                for s, e in zip(first.tolist(), last.tolist(), strict=True)
            ]
        )
        run = np.repeat(np.arange(len(first)), np.diff(np.append(np.append(0, cut), len(rows))))
        offset = np.cumsum(last - first) - (last - first)  # each run's first row in `data`
        return np.frombuffer(data, np.uint16).reshape(-1, NUM_PERM)[offset[run] + rows - first[run]]


def _bucketed(band_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose key in one band some other row shares, in key order (equal keys in row
    order), and their keys."""
    # keys and rows in one uint64 each: sorting values is faster than a stable argsort, and
    # equal keys stay in row order just the same
    packed = np.sort(
        (band_keys.astype(np.uint64) << np.uint64(32)) | np.arange(len(band_keys), dtype=np.uint64)
    )
    keys = packed >> np.uint64(32)
    shared = np.zeros(len(keys), bool)
    shared[1:] = keys[1:] == keys[:-1]
    shared[:-1] |= shared[1:]
    return (packed[shared] & np.uint64(0xFFFFFFFF)).astype(np.int64), keys[shared]


def _contains(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    if not len(sorted_codes):
        return np.zeros(len(codes), bool)
    pos = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
    return sorted_codes[pos] == codes


def components(n: int, pairs: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each of n rows, the row that represents its connected component in the graph of
    `pairs`: the member with the smallest `rank` (a content hash, so the choice does not
    depend on file or stream order). Label propagation with pointer jumping, in NumPy."""
    order = np.argsort(rank, kind="stable")
    pos = np.empty(n, np.int64)
    pos[order] = np.arange(n)  # position of each row in rank order
    label = np.arange(n)  # labels are positions; a component ends labelled by its minimum
    if len(pairs):
        u, v = pos[pairs[:, 0]], pos[pairs[:, 1]]
        while True:
            low = np.minimum(label[u], label[v])
            new = label.copy()
            np.minimum.at(new, u, low)
            np.minimum.at(new, v, low)
            while not np.array_equal(new[new], new):
                new = new[new]
            if np.array_equal(new, label):
                break
            label = new
    return order[label[pos]]


class ExactHashes:
    """Exact-duplicate memory in ~8 bytes per document: 64-bit content hashes (collision odds
    ~1e-4 at 1e8 documents) in sorted NumPy runs, merged log-structured so that adding stays
    cheap however many documents came before."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self.runs)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        order = np.argsort(hashes)
        queries = hashes[order]  # sorted queries: each binary search starts where the last ended
        found = np.zeros(len(hashes), bool)
        for run in self.runs:
            pos = np.minimum(np.searchsorted(run, queries), len(run) - 1)
            found[order] |= run[pos] == queries
        return found

    def add(self, hashes: np.ndarray) -> None:
        run = np.sort(hashes)
        run = run[np.append(True, run[1:] != run[:-1])] if len(run) else run
        run = run[~self.contains(run)]  # each hash lives in one run only
        if not len(run):
            return
        while self.runs and len(self.runs[-1]) <= 2 * len(run):  # disjoint: concatenate + sort
            run = np.sort(np.concatenate([self.runs.pop(), run]), kind="stable")
        self.runs.append(run)
