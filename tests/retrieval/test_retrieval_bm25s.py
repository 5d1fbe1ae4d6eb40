"""The bm25s backend against a real on-disk index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from semoe.config import RetrievalConfig
from semoe.data.schema import Passage
from semoe.retrieval import RETRIEVERS
from semoe.retrieval.base import RetrievalError
from tests.support.helpers import AWKWARD_QUERIES, CORPUS, TrackedPassages

pytest.importorskip("bm25s")


def make(tmp_path: Path, key: str = "corpus-a", **options):
    return RETRIEVERS.get("bm25s")(RetrievalConfig(backend="bm25s", options=options), tmp_path / f"bm25s-{key}", key)


@pytest.fixture()
def built(tmp_path):
    r = make(tmp_path)
    r.build(iter(CORPUS), total=len(CORPUS))
    yield r
    r.close()


def test_not_built_then_built(tmp_path):
    r = make(tmp_path)
    assert not r.is_built()
    with pytest.raises(RetrievalError, match="build it first"):
        r.search(["anything"], 3)
    stats = r.build(iter(CORPUS))
    assert stats["passages"] == len(CORPUS)
    manifest = json.loads((r.index_dir / "manifest.json").read_text())
    assert manifest["passages"] == len(CORPUS) and manifest["corpus_key"] == "corpus-a"
    assert manifest["index"] == {"analyzer": {}, "k1": 1.2, "b": 0.75, "method": "lucene"}
    assert make(tmp_path).is_built(), "a fresh instance (new process) sees the finished index"
    assert not make(tmp_path, key="corpus-b").is_built()
    assert not make(tmp_path, k1=1.5).is_built(), "scores are precomputed with k1: another k1 is another index"


def test_rare_entity_at_rank_one_and_passages_read_back(built):
    [hits] = built.search(["Where is Quorvanthe?"], 3)
    assert hits[0].passage == CORPUS[0] and hits[0].rank == 1
    [hits] = built.search(["Which painter was born in 1871?"], 3)
    assert hits[0].passage == CORPUS[2]
    [hits] = built.search(["Meridel"], 3)
    assert [h.passage.id for h in hits] == ["p2"], "only passages holding a query term, no score-0 padding"


def test_scores_descending_and_k_respected(built):
    for k in (1, 2, 3, 5, 100):
        for hits in built.search(["bell town market painter harbour", "market", "glass bells"], k):
            assert 0 < len(hits) <= min(k, len(CORPUS))
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
            assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
            assert len({h.passage.id for h in hits}) == len(hits)


def test_ranking_agrees_with_tantivy_on_single_term_queries(built, tmp_path):
    """Same analyzer and BM25 parameters: one-term queries rank alike (scores differ by the
    field split: tantivy scores title and text apart)."""
    tantivy = RETRIEVERS.get("tantivy")(RetrievalConfig(), tmp_path / "t", "corpus-a")
    tantivy.build(iter(CORPUS))
    for q in ["Quorvanthe", "Meridel", "harbour", "painter"]:
        [a], [b] = built.search([q], 3), tantivy.search([q], 3)
        assert {h.passage.id for h in a} == {h.passage.id for h in b}, q
    tantivy.close()


def test_awkward_queries_do_not_raise(built):
    results = built.search(AWKWARD_QUERIES, 3)
    by_query = dict(zip(AWKWARD_QUERIES, results))
    assert by_query['Who painted "Harbour Lights"?'][0].passage.id == "p5"
    assert by_query["title:Quorvanthe AND (river OR town)"][0].passage.id == "p1"
    assert by_query[""] == [] and by_query["   "] == []


def test_no_match_and_empty_batch(built):
    assert built.search(["zyxwvut"], 3) == [[]]
    assert built.search([], 3) == []
    assert built.search(["market"], 0) == [[]]


def test_empty_corpus(tmp_path):
    r = make(tmp_path)
    assert r.build(iter([]))["passages"] == 0
    assert r.is_built() and r.search(["anything"], 3) == [[]]


def test_failed_build_leaves_nothing_marked(tmp_path):
    def exploding() -> Iterator[Passage]:
        yield from CORPUS
        raise KeyboardInterrupt

    r = make(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        r.build(exploding())
    assert not r.is_built() and not r.index_dir.exists()
    assert not list(r.index_dir.parent.glob(".*.tmp-*"))


def test_rebuild_replaces_previous_index(built):
    assert built.search(["Quorvanthe"], 3)[0]
    built.build(iter([Passage("n1", "Nobody", "An entirely different corpus.")]))
    assert built.search(["Quorvanthe"], 3) == [[]]
    assert built.search(["different corpus"], 3)[0][0].passage.id == "n1"


def test_builds_from_lazy_generator_without_holding_passages(tmp_path):
    """Passages are written to disk as they come: only their term ids stay in memory."""
    stream = TrackedPassages(5000)
    r = make(tmp_path)
    assert r.build(iter(stream))["passages"] == stream.n
    assert stream.peak_alive <= 10, f"{stream.peak_alive} passages were held in memory at once"
    [hits] = r.search(["tok1234x"], 3)
    assert hits[0].passage == Passage("g1234", "Entity 1234", "filler text number 1234 with token tok1234x")


def test_top_k_agrees_with_bm25s_own_scores(tmp_path):
    """semoe sums bm25s's score columns itself (MaxScore, only over the postings it needs):
    the scores and the ranking are bm25s's (which sums in float32, hence approx)."""
    import random

    import numpy as np

    from semoe.retrieval.backends.bm25s_bm25 import _bm25s

    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    weights = [1.0 / (i + 1) for i in range(len(words))]
    passages = [Passage(f"d{i}", "", " ".join(rng.choices(words, weights, k=30))) for i in range(3000)]
    r = make(tmp_path)
    r.build(iter(passages))
    queries = [" ".join(rng.choices(words, k=rng.randint(1, 6))) for _ in range(60)] + ["w0 w1 w2 w3", "w299"]
    ours = r.search(queries, 5)
    model = _bm25s().BM25.load(str(r.index_dir))
    for q, hits in zip(queries, ours):
        ids = list(dict.fromkeys(model.vocab_dict[t] for t in q.split() if t in model.vocab_dict))
        reference = model.get_scores(ids)
        expected = np.sort(reference[reference > 0])[::-1][:5]
        assert [h.score for h in hits] == pytest.approx(expected.tolist(), rel=1e-5), q
        for h in hits:
            assert h.score == pytest.approx(float(reference[int(h.passage.id[1:])]), rel=1e-5)
    r.close()


def test_missing_package_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "bm25s", None)  # as if not installed
    with pytest.raises(RetrievalError, match=r"pip install 'semoe\[bm25s\]'"):
        make(tmp_path).build(iter(CORPUS))
