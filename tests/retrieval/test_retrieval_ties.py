"""Equal BM25 scores are ordered by corpus order in every backend, never by index layout.

The bug this guards: tantivy returns equal scores in index-layout order (segments, doc
addresses), and a multi-threaded build lays segments out differently from build to build,
so the same corpus, config and code retrieved different passages at a tie at the cut-off.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tantivy

from semoe.config import RetrievalConfig
from semoe.data.schema import Passage
from semoe.retrieval import RETRIEVERS
from semoe.retrieval.backends import elasticsearch_bm25, tantivy_bm25
from semoe.retrieval.base import RetrievalError, top_k_in_corpus_order


def tie_corpus() -> list[Passage]:
    """60 passages: 20 identical twins (rows 0, 3, ..., 57; title "Twin", equal scores by
    construction), one passage that outscores them on "glass bell" (row 59), and filler;
    "lighthouse" occurs in two passages only."""
    out = []
    for row in range(59):
        if row % 3 == 0:
            out.append(Passage(f"twin{row:02d}", "Twin", "the glass bell of the harbour"))
        else:
            extra = " lighthouse" if row in (10, 50) else ""
            out.append(Passage(f"other{row:02d}", f"Other {row}", f"unrelated filler words number {row} river{extra}"))
    out.append(Passage("strong59", "Glass Bell", "the glass bell of the glass bell maker"))
    return out


CORPUS = tie_corpus()
ROW = {p.id: row for row, p in enumerate(CORPUS)}
QUERIES = ["glass bell", "twin", "lighthouse", "twin glass bell river lighthouse", "harbour"]


def make(backend: str, where: Path, **cfg):
    return RETRIEVERS.get(backend)(RetrievalConfig(backend=backend, **cfg), where / f"{backend}-ties", "ties")


def built(backend: str, where: Path, **cfg):
    r = make(backend, where, **cfg)
    r.build(iter(CORPUS))
    return r


def segments(r) -> int:
    return tantivy.Index.open(str(r.index_dir)).searcher().num_segments


def segment_files(r) -> set[str]:
    """The index's segment files (named by segment id; not the locks or meta files)."""
    return {f.name for f in r.index_dir.iterdir() if not f.name.startswith(".") and not f.name.endswith(".json")}


def as_tuples(results):
    return [[(h.passage.id, h.rank, h.score) for h in hits] for hits in results]


def assert_corpus_order(hits) -> None:
    """Score descending, then lower corpus row first, ranks 1..n."""
    keys = [(-h.score, ROW[h.passage.id]) for h in hits]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


# ---- the rule, on a fake engine ---------------------------------------------------


def engine(scores: list[float], seed: int):
    """A fake engine over rows 0..n-1 (payload ``doc<row>``): ``fetch(n)`` answers its best n
    by score, equal scores in a shuffled (layout) order; ``rows`` reads the payloads' rows.
    ``asked`` records each n fetched and each rows call."""
    rng = random.Random(seed)
    layout = list(range(len(scores)))
    rng.shuffle(layout)
    ranked = sorted(layout, key=lambda row: -scores[row])  # stable: ties keep the layout order
    asked: list = []

    def fetch(n: int):
        asked.append(n)
        return [(scores[row], f"doc{row}") for row in ranked[:n]]

    def rows(payloads: list[str]):
        asked.append("rows")
        return [int(p[3:]) for p in payloads]

    return fetch, rows, asked


@pytest.mark.parametrize("seed", range(30))
def test_rule_is_exact_for_any_layout(seed):
    rng = random.Random(seed)
    scores = [float(rng.choice([1.0, 2.0, 2.5, 3.0])) for _ in range(rng.randint(0, 40))]
    for k in range(1, len(scores) + 3):
        fetch, rows, _ = engine(scores, seed)
        expected = sorted(((s, f"doc{row}") for row, s in enumerate(scores)), key=lambda h: (-h[0], int(h[1][3:])))
        assert top_k_in_corpus_order(fetch, rows, k) == expected[:k]


def test_rule_fetches_k_plus_one_then_doubles_while_ties_continue():
    fetch, rows, asked = engine([5.0, 4.0, 3.0, 2.0, 1.0], seed=0)
    assert [p for _, p in top_k_in_corpus_order(fetch, rows, 3)] == ["doc0", "doc1", "doc2"]
    assert asked == [4], "no tie: one search of k+1, no row read"

    fetch, rows, asked = engine([9.0] + [1.0] * 20, seed=1)
    assert [p for _, p in top_k_in_corpus_order(fetch, rows, 3)] == ["doc0", "doc1", "doc2"]
    assert asked == [4, 8, 16, 32, "rows"], "doubled until the engine returned fewer than asked"

    fetch, rows, asked = engine([9.0, 8.0, 1.0, 1.0], seed=2)
    assert [p for _, p in top_k_in_corpus_order(fetch, rows, 2)] == ["doc0", "doc1"]
    assert asked == [3], "a tie below the k-th does not matter"
    assert top_k_in_corpus_order(fetch, rows, 0) == [] and asked == [3]


# ---- tantivy -------------------------------------------------------------------------


def test_tantivy_hits_do_not_depend_on_the_index_layout(tmp_path, monkeypatch):
    """The bug: one build in a single segment (corpus order = doc order), one in several
    (a commit every 9 passages: 7 segments, under the merge policy's 8); same hits, ranks and
    scores, tie winners the lower rows."""
    one_segment = built("tantivy", tmp_path / "a", writer_heap_mb=16)
    monkeypatch.setattr(tantivy_bm25, "COMMIT_EVERY", 9)
    several = built("tantivy", tmp_path / "b", writer_heap_mb=16)
    assert segments(one_segment) == 1 < segments(several), "the two builds must lay the index out differently"
    for k in (1, 2, 3, 5, 25):
        expected = one_segment.search(QUERIES, k)
        assert as_tuples(several.search(QUERIES, k)) == as_tuples(expected)
    [glass] = several.search(["glass bell"], 3)
    assert [h.passage.id for h in glass] == ["strong59", "twin00", "twin03"]
    assert glass[1].score == glass[2].score, "a tie at the cut-off"
    for r in (one_segment, several):
        r.close()


@pytest.fixture(scope="module")
def tantivy_ties(tmp_path_factory):
    r = built("tantivy", tmp_path_factory.mktemp("ties"))
    yield r
    r.close()


def test_tantivy_ties_at_every_rank_in_corpus_order(tantivy_ties):
    [twins] = tantivy_ties.search(["twin"], 5)
    assert [h.passage.id for h in twins] == ["twin00", "twin03", "twin06", "twin09", "twin12"]
    assert len({h.score for h in twins}) == 1
    for hits in tantivy_ties.search(QUERIES, 25):
        assert_corpus_order(hits)


def test_tantivy_fewer_matches_than_k_and_k_beyond_the_corpus(tantivy_ties):
    [few] = tantivy_ties.search(["lighthouse"], 5)
    assert [h.passage.id for h in few] == ["other10", "other50"]
    [everything] = tantivy_ties.search(["twin glass bell river lighthouse"], 100)
    assert {h.passage.id for h in everything} == set(ROW)
    assert_corpus_order(everything)


def test_tantivy_index_of_an_older_schema_is_rebuilt_not_reused(tmp_path):
    r = built("tantivy", tmp_path)
    manifest = json.loads(r.manifest_path.read_text())
    r.write_manifest({**manifest, "schema_version": tantivy_bm25.SCHEMA_VERSION - 1})
    old_segments = segment_files(r)
    fresh = make("tantivy", tmp_path)
    assert not fresh.is_built()
    with pytest.raises(RetrievalError, match="build it first"):
        fresh.search(["twin"], 3)
    fresh.build(iter(CORPUS))
    assert fresh.is_built()
    assert old_segments and not old_segments & segment_files(fresh), "no segment of the old index is kept"
    assert [h.passage.id for h in fresh.search(["twin"], 2)[0]] == ["twin00", "twin03"]
    for x in (r, fresh):
        x.close()


# ---- bm25s: the same rule (``bm25s_bm25._best``) ------------------------------------------


def test_bm25s_orders_ties_by_the_same_rule(tmp_path, tantivy_ties):
    pytest.importorskip("bm25s")
    r = built("bm25s", tmp_path)
    for query, k in (("glass bell", 3), ("twin", 5), ("lighthouse", 5)):
        [hits] = r.search([query], k)
        [reference] = tantivy_ties.search([query], k)
        assert [h.passage.id for h in hits] == [h.passage.id for h in reference], query
    for hits in r.search(QUERIES, 100):
        assert_corpus_order(hits)
    r.close()


# ---- Elasticsearch: the server sorts (no server needed to check what is sent) ----------


def test_elasticsearch_sorts_ties_by_the_corpus_row_it_indexes(tmp_path):
    r = make("elasticsearch", tmp_path, es_url="http://127.0.0.1:9")
    body = r._body("glass bell", 3)
    assert body["sort"] == [{"_score": "desc"}, {"row": "asc"}] and body["track_scores"] is True
    assert body["size"] == 3
    assert elasticsearch_bm25.PROPERTIES["row"] == {"type": "long"}
    docs = list(r._actions(iter(CORPUS)))
    assert [d["_source"]["row"] for d in docs] == list(range(len(CORPUS)))
    assert [d["_source"]["id"] for d in docs] == [p.id for p in CORPUS]


def test_elasticsearch_index_of_an_older_schema_is_not_built_and_refused(tmp_path, monkeypatch):
    r = make("elasticsearch", tmp_path, es_url="http://127.0.0.1:9")
    old = {"semoe_complete": True, "corpus_key": "ties", "bm25": elasticsearch_bm25.BM25}  # as written before
    monkeypatch.setattr(r, "_meta", lambda: old)
    assert not r.is_built(), "the pipeline rebuilds it"
    with pytest.raises(RetrievalError, match="schema version 1, this semoe reads 2.*rebuild it"):
        r.search(["glass bell"], 3)
    current = {**old, "schema_version": elasticsearch_bm25.SCHEMA_VERSION}
    monkeypatch.setattr(r, "_meta", lambda: current)
    assert r.is_built()
