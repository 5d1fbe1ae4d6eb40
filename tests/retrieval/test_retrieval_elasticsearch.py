"""The Elasticsearch backend.

Behaviour tests need a live server (``SEMOE_ES_URL``, credentials from ``SEMOE_ES_*``);
each uses its own index and deletes it afterwards. The failure tests need no server:
they point the real client at local addresses where no Elasticsearch answers.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from semoe.config import RetrievalConfig
from semoe.retrieval import RETRIEVERS
from semoe.retrieval.base import RetrievalError
from tests.support.helpers import AWKWARD_QUERIES, CORPUS, TrackedPassages

ES_URL = os.environ.get("SEMOE_ES_URL")


def make(tmp_path: Path, key: str | None = None, **cfg):
    key = key or uuid.uuid4().hex
    cfg.setdefault("es_index", f"semoe-test-{uuid.uuid4().hex[:12]}")
    return RETRIEVERS.get("elasticsearch")(RetrievalConfig(**cfg), tmp_path / f"elasticsearch-{key}", key)


@pytest.fixture()
def fresh(tmp_path):
    made = []

    def factory(**kw):
        r = make(tmp_path, **kw)
        made.append(r)
        return r

    yield factory
    for r in made:
        r.drop()
        r.close()


@pytest.fixture()
def built(fresh):
    r = fresh()
    r.build(iter(CORPUS), total=len(CORPUS))
    return r


def test_registered():
    assert "elasticsearch" in RETRIEVERS.names()


# ---- without a server -------------------------------------------------------


def test_unreachable_server_fails_fast_naming_the_url(tmp_path):
    r = make(tmp_path, es_url="http://127.0.0.1:9")
    with pytest.raises(RetrievalError, match=r"Elasticsearch at http://127\.0\.0\.1:9 is unreachable"):
        r.is_built()
    with pytest.raises(RetrievalError, match=r"http://127\.0\.0\.1:9"):
        r.search(["a question"], 3)


def test_silent_server_times_out_within_seconds(tmp_path):
    """A port that accepts connections but never answers (a hung node)."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        r = make(tmp_path, es_url=url)
        with pytest.raises(RetrievalError, match=f"Elasticsearch at {url} is unreachable"):
            r.is_built()
        # one connection: the ping timed out once and was not retried (retries would multiply the wait)
        srv.setblocking(False)
        connections = 0
        while True:
            try:
                srv.accept()[0].close()
            except BlockingIOError:
                break
            connections += 1
        assert connections == 1


def test_missing_url_is_explained(tmp_path, monkeypatch):
    monkeypatch.delenv("SEMOE_ES_URL", raising=False)
    with pytest.raises(RetrievalError, match="SEMOE_ES_URL"):
        make(tmp_path).is_built()


def test_credentials_in_config_url_are_refused(tmp_path):
    """Refused by the config itself (configs are stored with results), without echoing them."""
    with pytest.raises(ValidationError, match="SEMOE_ES_API_KEY") as exc:
        make(tmp_path, es_url="http://elastic:s3cret@127.0.0.1:9")
    assert "s3cret" not in str(exc.value)


def test_index_name_defaults_to_corpus_key(tmp_path):
    r = RETRIEVERS.get("elasticsearch")(RetrievalConfig(es_url="http://127.0.0.1:9"), tmp_path, "ABCDEF0123456789ffff")
    assert r.index_name == "semoe-abcdef0123456789"
    with pytest.raises(RetrievalError, match="invalid Elasticsearch index name"):
        make(tmp_path, es_index="semoe-*")


def test_empty_queries_need_no_server(tmp_path):
    r = make(tmp_path, es_url="http://127.0.0.1:9")
    assert r.search([], 3) == []
    assert r.search(["", "   "], 3) == [[], []]


# ---- against a live server ----------------------------------------------------


@pytest.mark.elasticsearch
@pytest.mark.skipif(not ES_URL, reason="SEMOE_ES_URL not set: no Elasticsearch server on this machine")
class TestLiveServer:
    def test_not_built_then_built(self, fresh):
        r = fresh()
        assert not r.is_built()
        stats = r.build(iter(CORPUS))
        assert stats["passages"] == len(CORPUS)
        assert r.is_built()
        assert (r.index_dir / "manifest.json").is_file()
        other = fresh(es_index=r.index_name)
        assert not other.is_built(), "same index, other corpus key: not this corpus's index"

    def test_rare_entity_at_rank_one(self, built):
        [hits] = built.search(["Where is Quorvanthe?"], 3)
        assert hits[0].passage == CORPUS[0] and hits[0].rank == 1
        [hits] = built.search(["Which painter was born in 1871?"], 3)
        assert hits[0].passage.id == "p3"

    def test_scores_descending_and_k_respected(self, built):
        for k in (1, 2, 3, 5):
            for hits in built.search(["bell town market painter harbour", "market", "glass bells"], k):
                assert 0 < len(hits) <= k
                scores = [h.score for h in hits]
                assert scores == sorted(scores, reverse=True)
                assert [h.rank for h in hits] == list(range(1, len(hits) + 1))

    def test_batch_keeps_query_order(self, built):
        results = built.search(["Meridel", "Quorvanthe", "Tobin Ashcroft"], 1)
        assert [r[0].passage.id for r in results] == ["p2", "p1", "p3"]

    def test_awkward_queries_do_not_raise(self, built):
        results = built.search(AWKWARD_QUERIES, 3)
        by_query = dict(zip(AWKWARD_QUERIES, results))
        assert by_query['Who painted "Harbour Lights"?'][0].passage.id == "p5"
        assert by_query[""] == [] and by_query["   "] == []

    def test_partial_build_is_replaced(self, fresh):
        r = fresh()
        es = r._connect()
        es.indices.create(index=r.index_name, mappings={"_meta": {"semoe_complete": False, "corpus_key": r.corpus_key}})
        junk = {"id": "junk", "title": "junk", "text": "Quorvanthe junk"}
        es.index(index=r.index_name, id="junk", document=junk, refresh=True)
        assert not r.is_built()
        assert r.build(iter(CORPUS))["passages"] == len(CORPUS)
        assert r.is_built()
        ids = {h.passage.id for h in r.search(["Quorvanthe junk"], 10)[0]}
        assert "junk" not in ids and "p1" in ids

    def test_builds_from_lazy_generator(self, fresh):
        stream = TrackedPassages(20_000)
        r = fresh(bulk_batch_size=2000)
        assert r.build(iter(stream))["passages"] == stream.n == stream.produced
        assert stream.peak_alive <= 10, f"{stream.peak_alive} passages held at once"
        assert r.search(["tok12345x"], 3)[0][0].passage.id == "g12345"
