"""The embed stage on tiny inputs: training, exports, evaluation, `gruflow similar`, bad input."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from gensim.models import KeyedVectors, Word2Vec
from tokenizers import Tokenizer

from components import embed
from components.contract import BOS, EOS, PAD, encode
from components.embedding.quality import TokenVectors, cosine_neighbours
from components.errors import GruflowError
from components.params import Params, load_params, parse_params
from components.tokenize import train_tokenizer
from flows import cli

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_A, CLUSTER_B = list(range(4, 14)), list(range(14, 24))
VOCAB = 40  # ids 24..39 never occur
SUBJECTS = ["the parser", "a socket", "the buffer", "each thread", "the module", "a file"]
VERBS = ["reads", "returns", "closes", "opens", "writes", "checks"]
OBJECTS = ["the header", "a list of names", "the next line", "an integer", "the cached value"]


@pytest.fixture(scope="module")
def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture(scope="module")
def params(raw_params) -> Params:
    return parse_params(raw_params)


def cluster_sentences(n: int = 150) -> list[list[str]]:
    rng = random.Random(0)
    return [[str(rng.choice(cluster)) for _ in range(12)] for cluster in [CLUSTER_A, CLUSTER_B] * n]


def small(params: Params, **update):
    return params.embed.model_copy(update={"dim": 16, "epochs": 5, "min_count": 1, **update})


def write_tokens(path: Path, docs: list[list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"ids": pa.array(docs, pa.list_(pa.int32()))}), path)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize(("algorithm", "sg"), [("skipgram", 1), ("cbow", 0)])
def test_word2vec_settings(params, algorithm, sg):
    cfg = small(params, algorithm=algorithm, subsample=0.0)
    settings = embed.word2vec_settings(cfg)
    assert settings["sg"] == sg and settings["hs"] == 0 and settings["sample"] == 0.0
    assert (settings["vector_size"], settings["negative"]) == (16, cfg.negatives)


@pytest.mark.parametrize("algorithm", ["skipgram", "cbow"])
def test_trained_rows_equal_the_bare_gensim_call(params, algorithm):
    cfg = small(params, algorithm=algorithm)
    sentences = cluster_sentences(40)
    matrix = embed.train_vectors(sentences, VOCAB, cfg)
    bare = Word2Vec(sentences, **embed.word2vec_settings(cfg)).wv
    ids = [int(k) for k in bare.index_to_key]
    np.testing.assert_array_equal(matrix[ids], bare.vectors)  # same vectors, same seed
    assert matrix.shape == (VOCAB, 16) and matrix.dtype == np.float32
    assert not matrix[PAD].any() and np.isfinite(matrix).all()
    assert (np.linalg.norm(matrix[24:], axis=1) > 0).all()  # unseen ids: random, not zeros


def test_training_prints_a_line_per_epoch(params, capsys):
    """Embed is not silent: one console line per Word2Vec epoch with the time left (the
    vectors stay the bare call's: test_trained_rows_equal_the_bare_gensim_call)."""
    cfg = small(params)
    embed.train_vectors(cluster_sentences(40), VOCAB, cfg)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("embed: epoch")]
    assert [line.split()[2] for line in lines] == [
        f"{e}/{cfg.epochs}" for e in range(1, cfg.epochs + 1)
    ]
    assert lines[-1].endswith("~0 s left)")


@pytest.fixture(scope="module", params=["skipgram", "cbow"])
def cluster_vectors(request, params) -> np.ndarray:
    return embed.train_vectors(cluster_sentences(), VOCAB, small(params, algorithm=request.param))


@pytest.mark.parametrize("token", [4, 9, 15, 22])
def test_neighbours_stay_in_cluster(cluster_vectors, token):
    own = CLUSTER_A if token in CLUSTER_A else CLUSTER_B
    neighbours = [i for i, _ in cosine_neighbours(cluster_vectors, token, k=5)]
    assert sum(i in own for i in neighbours) >= 4, neighbours


def test_embed_run_saves_matrix(params, tmp_path):
    ids = [[BOS, *[random.Random(i).choice(CLUSTER_A) for _ in range(10)], EOS] for i in range(50)]
    write_tokens(tmp_path / "tokens" / "train.parquet", ids)
    cfg = params.embed.model_copy(update={"dim": 8, "epochs": 1})
    summary = embed.run(cfg, tmp_path / "tokens", VOCAB, tmp_path / "emb.npy", tmp_path / "e.json")
    matrix = np.load(tmp_path / "emb.npy")
    assert matrix.shape == (VOCAB, 8) and not matrix[PAD].any()
    assert summary["mean_norm"] == pytest.approx(np.linalg.norm(matrix, axis=1).mean())


def test_read_sentences_cuts_what_gensim_would_truncate(tmp_path):
    n = embed.MAX_WORDS_IN_BATCH
    write_tokens(tmp_path / "t.parquet", [[5] * (2 * n + 7), [BOS, 6, EOS]])
    sentences = embed.read_sentences(tmp_path / "t.parquet", VOCAB)
    assert [len(s) for s in sentences] == [n, n, 7, 3]
    assert sentences[3] == [str(BOS), "6", str(EOS)]


def test_stale_token_ids_fail(tmp_path):
    write_tokens(tmp_path / "t.parquet", [[BOS, VOCAB + 3, EOS]])
    with pytest.raises(GruflowError, match="rerun the tokenize stage"):
        embed.read_sentences(tmp_path / "t.parquet", VOCAB)


def test_corpus_smaller_than_the_window_fails(params):
    with pytest.raises(GruflowError, match=r"fewer than embed.window \+ 1 \(6\)"):
        embed.train_vectors([["4", "5", "6"]], VOCAB, small(params, window=5))


def test_min_count_above_every_token_fails(params):
    with pytest.raises(GruflowError, match="embed.min_count"):
        embed.train_vectors([[str(i) for i in range(4, 20)]], VOCAB, small(params, min_count=2))


def test_readable_escapes():
    assert embed.escape("a\tb\nc\\") == "a\\tb\\nc\\\\"
    assert embed.w2v_key("Ġreturn") == "Ġreturn" and embed.w2v_key(" \n") == "\\s\\n"


# --------------------------------------------------------------------------- the stage


def tiny_texts(n_docs: int = 200) -> list[str]:
    rng = random.Random(0)
    return [
        " ".join(
            f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(5)
        )
        + "\n\tEnd."
        for _ in range(n_docs)
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory, raw_params) -> Path:
    """A tiny project: params.yaml, tokenizer, token Parquet, pairs file; paths are relative."""
    root = tmp_path_factory.mktemp("embed_project")
    raw = copy.deepcopy(raw_params)
    raw["tokenize"].update(vocab_size=400, min_frequency=1)
    raw["embed"].update(
        dim=8,
        epochs=2,
        probes=["header", "frobnicate"],
        neighbours=3,
        analogy_file="eval/questions.txt",
    )
    raw["model"]["embedding_dim"] = 8
    raw["embed"]["pairs_file"] = "eval/pairs.tsv"
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    (root / "eval").mkdir()
    (root / "eval/pairs.tsv").write_text(
        "header\tline\t6\nlist\tnames\t7\nthe\tan\t8\nheader\tan\t1\nfrobnicate\tthe\t2\n"
    )
    (root / "eval/questions.txt").write_text("header line list names\nthe an a zzz\n")
    p = parse_params(raw)
    tok = train_tokenizer(iter(tiny_texts()), p.tokenize)
    (root / "artifacts").mkdir()
    tok.save(str(root / p.paths.tokenizer))
    for split, texts in (("train", tiny_texts()), ("val", tiny_texts(20))):
        write_tokens(root / p.paths.tokens / f"{split}.parquet", encode(tok, texts))
    return root


@pytest.fixture(scope="module")
def staged(project) -> dict:
    mp = pytest.MonkeyPatch()
    mp.chdir(project)
    try:
        embed.main()
        p = load_params()
    finally:
        mp.undo()
    report = json.loads((project / p.paths.reports / "embed.json").read_text())
    return {"p": p, "report": report, "tok": Tokenizer.from_file(str(project / p.paths.tokenizer))}


def test_stage_matrix_and_word2vec_text_round_trip(project, staged):
    p, tok = staged["p"], staged["tok"]
    matrix = np.load(project / p.paths.embeddings)
    assert matrix.shape == (tok.get_vocab_size(), 8) and not matrix[PAD].any()
    kv = KeyedVectors.load_word2vec_format(str(project / p.paths.word2vec))
    assert len(kv) == staged["report"]["trained_tokens"] and kv.vector_size == 8
    token_of = {key: name for name, key in embed.w2v_keys(embed.token_texts(tok)).items()}
    for key in kv.index_to_key:  # keys are readable texts: " header" -> "\\sheader"
        assert "Ġ" not in key
        np.testing.assert_array_equal(kv[key], matrix[tok.token_to_id(token_of[key])])
    assert "\\sheader" in kv.index_to_key


def test_stage_projector_files(project, staged):
    folder = project / staged["p"].paths.projector
    vectors = np.loadtxt(folder / "vectors.tsv", delimiter="\t")
    lines = (folder / "metadata.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "token\tid\tcount"
    assert vectors.shape == (len(lines) - 1, 8) == (staged["report"]["trained_tokens"], 8)
    cells = [line.split("\t") for line in lines[1:]]
    assert all(len(c) == 3 for c in cells)  # tabs and newlines inside tokens are escaped
    texts = [text for text, _, _ in cells]
    assert any("\\n" in t for t in texts) and any("\\t" in t for t in texts)
    assert {int(i): text for text, i, _ in cells}[BOS] == "<bos>"
    counts = [int(c) for _, _, c in cells]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0


def test_stage_report(staged):
    r = staged["report"]
    assert r["algorithm"] == "skipgram" and r["dim"] == 8 and 0 < r["coverage"] <= 1
    assert r["unknown_probes"] == ["frobnicate"] and list(r["neighbours"]) == ["header"]
    assert len(r["neighbours"]["header"]) == 3
    pairs = r["word_pairs"]
    assert (pairs["file"], pairs["pairs"], pairs["oov"]) == ("eval/pairs.tsv", 5, 1)
    assert -1 <= pairs["spearman"] <= 1
    assert r["analogies"]["questions"] == 2 and r["analogies"]["oov"] == 1


def test_bad_pairs_file_keeps_previous_outputs(project, staged):
    p = staged["p"]
    before = (project / p.paths.embeddings).read_bytes()
    cfg = p.embed.model_copy(update={"pairs_file": str(project / "eval/missing.tsv")})
    exports = embed.Exports(staged["tok"], project / p.paths.word2vec, project / "other")
    with pytest.raises(GruflowError, match="missing.tsv: evaluation file not found"):
        embed.run(
            cfg,
            project / p.paths.tokens,
            staged["tok"].get_vocab_size(),
            project / p.paths.embeddings,
            project / "r.json",
            exports=exports,
        )
    assert (project / p.paths.embeddings).read_bytes() == before
    assert not (project / "other").exists() and not (project / "r.json").exists()


# --------------------------------------------------------------------------- gruflow similar


def test_similar_prints_k_neighbours(project, staged, capsys):
    assert cli.main(["similar", "header", "-k", "4", "--project", str(project)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    sims = [float(line.split()[0]) for line in lines]
    assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
    result = embed.similar("header", 4, staged["p"], project)
    assert [round(s, 4) for _, s in result] == sims


def test_similar_unknown_word_is_one_line_error(project, staged, capsys):
    assert cli.main(["similar", "frobnicate", "--project", str(project)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'frobnicate' is not a single token" in err


def test_similar_word_without_vector_and_missing_artifacts(project, staged, tmp_path):
    p, tok = staged["p"], staged["tok"]
    kv = KeyedVectors.load_word2vec_format(str(project / p.paths.word2vec))
    keep = [k for k in kv.index_to_key if k != "\\sheader"]
    embed.write_word2vec(
        tmp_path / p.paths.word2vec, TokenVectors(keep, kv[keep]), {k: k for k in keep}
    )
    tok.save(str(tmp_path / p.paths.tokenizer))
    with pytest.raises(GruflowError, match=r"'header' \(token 'Ġheader'\) has no trained vector"):
        embed.similar("header", 3, p, tmp_path)
    with pytest.raises(GruflowError, match="missing — run `gruflow run`"):
        embed.similar("header", 3, p, tmp_path / "nowhere")


def test_similar_in_matrix_reads_any_id_aligned_matrix():
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    tok = train_tokenizer(
        iter(["red green blue cat dog cow " * 50]),
        p.tokenize.model_copy(update={"vocab_size": 300, "min_frequency": 1}),
    )
    ids = {w: tok.token_to_id("Ġ" + w) for w in ("green", "blue", "dog", "cow")}
    matrix = np.random.default_rng(0).normal(size=(tok.get_vocab_size(), 6)).astype(np.float32)
    matrix[ids["blue"]] = matrix[ids["green"]] * 2.0 + 0.01  # same direction as green
    pairs = embed.similar_in_matrix("green", 3, matrix, tok)
    assert pairs[0][0] == " blue" and pairs[0][1] > 0.99
    assert len(pairs) == 3 and all(name not in ("<pad>", "<bos>") for name, _ in pairs)
    with pytest.raises(GruflowError, match="not a single token"):
        embed.similar_in_matrix("zebra", 3, matrix, tok)


def test_similar_finds_chinese_tokens_and_shows_them_readable():
    """Byte-level BPE spells 是 as "æĺ¯": `similar 是` must find it, and neighbours print as
    text, with a partial character's bytes escaped and every text unique."""
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    text = "我们是学生。他们是老师。你们是朋友。" * 30
    tok = train_tokenizer(
        iter([text]), p.tokenize.model_copy(update={"vocab_size": 300, "min_frequency": 1})
    )
    shi = tok.token_to_id("æĺ¯")
    assert shi is not None  # the byte-level spelling of 是
    matrix = np.random.default_rng(0).normal(size=(tok.get_vocab_size(), 6)).astype(np.float32)
    pairs = embed.similar_in_matrix("是", 5, matrix, tok)
    assert len(pairs) == 5 and not any(set(t) & set("æĺ¯çļĦ") for t, _ in pairs)
    texts = embed.token_texts(tok)
    assert texts["æĺ¯"] == "是" and texts["Ġ"] == " "
    assert len(set(texts.values())) == tok.get_vocab_size()
    assert texts["æĺ"] == "\\xe6\\x98"  # the first two bytes of 是 (a BPE merge on the way)
    partial = [t for t in texts.values() if t.startswith("\\x")]
    assert partial and all(ch.isascii() for t in partial for ch in t)
