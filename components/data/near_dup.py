"""Near-duplicate detection with MinHash signatures and an LSH index (datasketch).

Shingles are character n-grams of the lower-cased text with blanks collapsed, so the same
rule works for text with spaces and without (Chinese, Japanese). Documents are seen in stream
order; a document whose estimated Jaccard similarity to an earlier kept one reaches the
threshold is a duplicate. Usage: `seen = NearDuplicates(0.8, 5); seen.is_duplicate(id, text)`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from datasketch import MinHash

NUM_PERM = 128
# Signatures cover the first this-many characters: a 50 MB line must not become 50 M shingles.
MAX_CHARS = 200_000
CANDIDATE_MARGIN = 0.15
_BLANKS = re.compile(r"\s+")


def shingles(text: str, n: int) -> set[bytes]:
    norm = _BLANKS.sub(" ", text[:MAX_CHARS].lower()).strip()
    if len(norm) <= n:
        return {norm.encode("utf-8")}
    return {norm[i:i + n].encode("utf-8") for i in range(len(norm) - n + 1)}


def signature(text: str, n: int) -> MinHash:
    from datasketch import MinHash  # ~0.4 s of imports (scipy): only when near_dup is on

    mh = MinHash(num_perm=NUM_PERM, seed=1)
    mh.update_batch(list(shingles(text, n)))
    return mh


class NearDuplicates:
    """An LSH index of the documents kept so far (memory grows with them, ~1.5 KB each).

    The index is built for a lower threshold than asked, so its S-curve misses few true pairs;
    each candidate is then verified with the signatures' Jaccard estimate."""

    def __init__(self, threshold: float, ngram: int) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.ngram = ngram
        self.lsh = MinHashLSH(threshold=max(threshold - CANDIDATE_MARGIN, 0.05),
                              num_perm=NUM_PERM)
        self.signatures: dict[str, np.ndarray] = {}

    def is_duplicate(self, key: str, text: str) -> bool:
        """True if `text` nearly duplicates an earlier kept document; else index it, False."""
        mh = signature(text, self.ngram)
        for other in self.lsh.query(mh):
            if np.mean(self.signatures[other] == mh.hashvalues) >= self.threshold:
                return True
        self.lsh.insert(key, mh)
        self.signatures[key] = mh.hashvalues
        return False


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
