"""Classification metrics, the two baselines fitted on the same split, the confusion plot.

Usage: `scores(y_true, y_pred, classes)`; `majority(train, test)`; `tfidf_logreg(train, test,
seed)` (scikit-learn); `confusion_plot(y_true, y_pred, classes, path)`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np


def scores(
    y_true: list[str], y_pred: list[str], classes: list[str], per_class: bool = False
) -> dict:
    """accuracy and macro-F1 over `classes` (a class never predicted scores F1 0); with
    `per_class`, precision/recall/F1/support of each class."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
        ),
    }
    if per_class:
        p, r, f, s = precision_recall_fscore_support(
            y_true, y_pred, labels=classes, zero_division=0
        )
        out["per_class"] = {
            c: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        }
    return out


def majority(train_labels: list[str], n_test: int) -> list[str]:
    """The train split's most frequent label for every test text (ties: first in order)."""
    top = sorted(Counter(train_labels).items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return [top] * n_test


def tfidf_logreg(train: dict[str, list[str]], test_texts: list[str], seed: int) -> list[str]:
    """TF-IDF of word uni- and bigrams + multinomial logistic regression (balanced weights,
    as the fine-tuned model's loss), fitted on the train split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=10.0, class_weight="balanced", random_state=seed),
    )
    clf.fit(train["text"], train["label"])
    return [str(y) for y in clf.predict(test_texts)]


def confusion(y_true: list[str], y_pred: list[str], classes: list[str]) -> np.ndarray:
    """Counts [true class, predicted class]."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(classes), len(classes)), np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        if p in index:
            out[index[t], index[p]] += 1
    return out


def confusion_plot(matrix: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 2.5 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = matrix.max() or 1
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)
