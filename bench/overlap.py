"""Brute-force test/train overlap of the cleaned splits: the reference the clean stage's
MinHash/LSH estimate is checked against (README, *No leakage*).

Usage: `python -m bench.overlap [data/clean] [--threshold 0.8] [--ngram 5]`: counts the test
documents with an exact copy in train and with a train document whose exact Jaccard similarity
of character n-gram sets (the shingles of components.data.near_dup) reaches the threshold. Every
test/train pair sharing a shingle is scored (an inverted index finds them), so nothing is
estimated; minutes on a large corpus.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from components.data.near_dup import shingles


def overlap(clean_dir: Path, threshold: float, ngram: int) -> dict:
    def texts(split: str) -> list[str]:
        return (
            pq.read_table(clean_dir / f"{split}.parquet", columns=["text"])
            .column("text")
            .to_pylist()
        )

    train, test = texts("train"), texts("test")
    sets = [shingles(t, ngram) for t in train]
    index: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for g in s:
            index[g].append(i)
    exact_train, exact = set(train), 0
    near = 0
    for text in test:
        s = shingles(text, ngram)
        shared: dict[int, int] = defaultdict(int)
        for g in s:
            for i in index.get(g, ()):
                shared[i] += 1
        best = max((c / (len(s) + len(sets[i]) - c) for i, c in shared.items()), default=0.0)
        exact += text in exact_train
        near += best >= threshold
    return {
        "test_documents": len(test),
        "train_documents": len(train),
        "exact": exact,
        "near": near,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clean_dir", nargs="?", type=Path, default=Path("data/clean"))
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--ngram", type=int, default=5)
    args = parser.parse_args()
    r = overlap(args.clean_dir, args.threshold, args.ngram)
    print(
        f"bench overlap: {r['near']} of {r['test_documents']} test documents have a train "
        f"document with Jaccard >= {args.threshold} ({r['exact']} exact copies); "
        f"{r['train_documents']} train documents"
    )


if __name__ == "__main__":
    main()
