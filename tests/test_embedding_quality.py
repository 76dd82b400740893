"""components/embedding/quality.py: word tokens, Spearman, pairs, analogies, probes and the
cosine neighbours they rank by, on toy tables."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from components.embedding import quality
from components.embedding.quality import TokenVectors, cosine_neighbours
from components.errors import GruflowError


def test_cosine_neighbours_match_numpy():
    m = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    token = 7
    got = cosine_neighbours(m, token, k=29)
    assert token not in [i for i, _ in got]
    assert sorted(i for i, _ in got) == [i for i in range(30) if i != token]
    sims = [s for _, s in got]
    assert sims == sorted(sims, reverse=True)
    v = m.astype(np.float64)
    for i, sim in got:
        direct = v[i] @ v[token] / (np.linalg.norm(v[i]) * np.linalg.norm(v[token]))
        assert sim == pytest.approx(direct, abs=1e-5)


def test_word_token_prefers_the_word_after_a_space():
    vocab = quality.token_lookup(["Ġreturn", "return", "("], {})
    assert quality.word_token("return", vocab) == "Ġreturn"
    assert quality.word_token("(", vocab) == "("
    assert quality.word_token("returns", vocab) is None


def test_word_token_finds_a_byte_level_token_by_its_text():
    names = ["æĺ¯", "Ġreturn", "æĺ"]
    lookup = quality.token_lookup(names, {"æĺ¯": "是", "Ġreturn": " return", "æĺ": "\\xe6\\x98"})
    assert quality.word_token("是", lookup) == "æĺ¯"
    assert quality.word_token("return", lookup) == "Ġreturn"
    assert quality.word_token("Ġreturn", lookup) == "Ġreturn"  # raw names still work


def test_main_script_and_auto_probes():
    assert [quality.script_of(c) for c in "a是の한1,"] == [
        "Latin",
        "Han",
        "Kana",
        "Hangul",
        None,
        None,
    ]
    assert quality.main_script({"我们": 10, "the": 5}) == "Han"  # 20 Han letters, 15 Latin
    assert quality.main_script({"我们": 3, "the": 5}) == "Latin"  # 6 Han letters, 15 Latin
    assert quality.main_script({"1,": 4}) is None
    names = ["Ġthe", "Ġparser", "的", "æĺ¯", "Ġreturns", "Ġé"]
    texts = {
        "Ġthe": " the",
        "Ġparser": " parser",
        "的": "的",
        "æĺ¯": "是",
        "Ġreturns": " returns",
        "Ġé": " é",
    }
    table = TokenVectors(names, np.eye(6, dtype=np.float32))
    counts = [90, 50, 40, 30, 20, 10]
    assert quality.auto_probes(table, counts, texts, "Latin") == ["parser", "returns"]
    assert quality.auto_probes(table, counts, texts, "Han") == ["的", "是"]
    assert quality.auto_probes(table, counts, texts, "Latin", n=1) == ["parser"]
    assert quality.auto_probes(table, counts, texts, None) == []


def test_report_skips_word_pairs_of_another_script(tmp_path):
    from components.params import load_params

    names = ["的", "是", "我", "们"]
    texts = {n: n for n in names}
    table = TokenVectors(names, np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32))
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("cat\tdog\t7\n")
    cfg = load_params().embed.model_copy(update={"pairs_file": str(pairs), "neighbours": 2})
    r = quality.quality_report(
        table, quality.token_lookup(names, texts), cfg, texts, [40, 30, 20, 10]
    )
    assert r["main_script"] == "Han"
    assert r["probes"] == {"source": "auto", "words": ["的", "是", "我", "们"]}
    assert r["word_pairs"]["used"] is False and "Latin" in r["word_pairs"]["reason"]
    assert r["word_pairs"]["spearman"] is None
    pairs.write_text("我\t们\t7\n的\t是\t2\n")
    r = quality.quality_report(
        table, quality.token_lookup(names, texts), cfg, texts, [40, 30, 20, 10]
    )
    assert r["word_pairs"]["used"] is True and r["word_pairs"]["oov"] == 0


def test_spearman_by_hand_and_against_scipy():
    assert quality.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6·2/60
    x, y = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8]  # ties on both sides
    assert quality.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert quality.spearman([1, 2, 3], [5, 5, 5]) is None  # constant: undefined
    assert quality.spearman([1], [2]) is None


def toy_table() -> tuple[TokenVectors, dict[str, str]]:
    e = np.eye(5, dtype=np.float32)
    names = ["Ġa", "Ġb", "Ġc", "Ġd", "Ġe"]  # b - a + c = d exactly
    vectors = np.stack([e[0], e[0] + e[1], e[2], e[2] + e[1], e[3] + 0.2 * e[4]])
    return TokenVectors(names, vectors), quality.token_lookup([*names, "Ġrare"], {})


def test_pairs_spearman_on_a_toy_file(tmp_path):
    table, vocab = toy_table()
    f = tmp_path / "pairs.tsv"
    f.write_text("# w1\tw2\tscore\n\na\tb\t9\nc\td\t8.5\na\tc\t1\nb\td\t4\na\trare\t5\nzzz\ta\t3\n")
    pairs = quality.read_pairs(f)
    assert len(pairs) == 6 and pairs[0] == ("a", "b", 9.0)
    result = quality.evaluate_pairs(table, vocab, pairs)
    # cosines: a·b = c·d = 1/√2, a·c = 0, b·d = 1/2 -> ranks agree with the scores but for a tie
    assert result["pairs"] == 6 and result["oov"] == 2  # "rare" has no vector, "zzz" no token
    assert result["spearman"] == pytest.approx(
        spearmanr([9, 8.5, 1, 4], [0.7071, 0.7071, 0, 0.5]).statistic
    )


def test_bad_pairs_line_names_file_and_line(tmp_path):
    f = tmp_path / "pairs.tsv"
    f.write_text("a\tb\t1\na\tb\tvery\n")
    with pytest.raises(GruflowError, match=r"pairs.tsv:2: expected 'word1<TAB>word2<TAB>score'"):
        quality.read_pairs(f)
    with pytest.raises(GruflowError, match="evaluation file not found"):
        quality.read_pairs(tmp_path / "missing.tsv")


def test_analogy_accuracy_on_a_toy_file(tmp_path):
    table, vocab = toy_table()
    f = tmp_path / "questions.txt"
    f.write_text(": toy\na b c d\nc d a b\na b c e\na b c rare\n")
    questions = quality.read_analogies(f)
    assert questions[0] == ("a", "b", "c", "d")
    result = quality.analogy_accuracy(table, vocab, questions)
    assert result == {"questions": 4, "oov": 1, "accuracy": pytest.approx(2 / 3)}
    f.write_text("a b c\n")
    with pytest.raises(GruflowError, match="questions.txt:1: expected four words"):
        quality.read_analogies(f)


def test_probe_neighbours_list_unknown_words():
    table, vocab = toy_table()
    texts = {n: n.replace("Ġ", " ") for n in table.names}
    found, unknown = quality.probe_neighbours(table, vocab, ["a", "rare", "nope"], 2, texts)
    assert unknown == ["rare", "nope"]
    assert [n["token"] for n in found["a"]] == [" b", " c"]  # c, d, e tie at 0: lowest row
    assert found["a"][0]["similarity"] == pytest.approx(0.7071, abs=1e-4)


def _gensim(vectors: np.ndarray):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vectors.shape[1], dtype=np.float32)
    kv.add_vectors([f"t{i}" for i in range(len(vectors))], vectors)
    return kv


def test_neighbours_and_analogies_agree_with_gensim():
    """The NumPy versions kept for speed give gensim's KeyedVectors answers."""
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(60, 12)).astype(np.float32)
    kv = _gensim(vectors)
    for token in (0, 17, 59):
        ours = cosine_neighbours(vectors, token, k=10)
        theirs = kv.most_similar(f"t{token}", topn=10)
        assert [f"t{i}" for i, _ in ours] == [key for key, _ in theirs]
        assert [s for _, s in ours] == pytest.approx([s for _, s in theirs], abs=1e-5)
    table = TokenVectors([f"Ġt{i}" for i in range(60)], vectors)
    vocab = quality.token_lookup(table.names, {})
    questions = [tuple(f"t{i}" for i in rng.choice(60, 4, replace=False)) for _ in range(40)]
    expected = [
        kv.most_similar(positive=[b, c], negative=[a], topn=1)[0][0] == d
        for a, b, c, d in questions
    ]
    # make half the questions right by gensim's own answer, so accuracy is not trivially 0
    questions = [
        (a, b, c, kv.most_similar(positive=[b, c], negative=[a], topn=1)[0][0])
        if n % 2
        else (a, b, c, d)
        for n, (a, b, c, d) in enumerate(questions)
    ]
    expected = [True if n % 2 else hit for n, hit in enumerate(expected)]
    result = quality.analogy_accuracy(table, vocab, questions)
    assert result["accuracy"] == pytest.approx(sum(expected) / len(expected))
