"""BM25 on an Elasticsearch server (for corpora or setups that already live there).

Connection: URL from ``retrieval.es_url`` or ``SEMOE_ES_URL``; credentials never in the
config, because configs are stored with the results: from the environment
(``SEMOE_ES_API_KEY``, or ``SEMOE_ES_USER`` + ``SEMOE_ES_PASSWORD``; a CA bundle for
self-signed TLS from ``SEMOE_ES_CA_CERTS``), else from the Prefect Secret block named by
``retrieval.es_secret_block`` (an API key string, or ``{"api_key": ...}`` or
``{"username": ..., "password": ...}``). The first call checks the server within 5 s and turns any failure into one
:class:`RetrievalError` naming the URL.

Scoring: one shard, so document frequencies (and scores) do not depend on how documents
were spread over shards; BM25 with k1=1.2, b=0.75, which are Elasticsearch's defaults and
tantivy's fixed values, so switching backend changes the tokenizer, not the ranking
function. Queries are ``multi_match`` of type ``most_fields`` over title and text (per-field
scores summed, as tantivy does); a match query analyses its text instead of parsing query
syntax, so free text needs no escaping.

Ties: corpus order, as every backend (``semoe.retrieval.base.top_k_in_corpus_order``).
Each document holds its corpus position ``row`` (a ``long``) and a search sorts by
``_score`` descending, then ``row`` ascending (``track_scores`` keeps ``_score`` in the
hits), so equal scores never come back in segment order. ``_meta.schema_version`` names
the document layout: an index of another version is not built (the pipeline rebuilds it)
and is refused by ``search`` with one message.

Completeness: the index is created with ``_meta.semoe_complete = false`` and flipped to
true (with the passage count) only after every bulk chunk succeeded and the index was
refreshed; ``is_built`` reads that flag, so a killed build is deleted and redone.

Client versions: the code uses only API calls that are the same in elasticsearch-py 8.x
and 9.x. A 9.x client cannot talk to an 8.x server (it sends ``compatible-with=9``); that
case is reported with the fix (``pip install 'elasticsearch>=8,<9'``).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

from semoe.data.schema import Passage
from semoe.retrieval import RETRIEVERS
from semoe.retrieval.base import Hit, RetrievalError, Retriever

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from semoe.config import RetrievalConfig

PING_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 120.0
MSEARCH_BATCH = 256
BM25 = {"type": "BM25", "k1": 1.2, "b": 0.75}
# 2: documents hold their corpus position ``row`` (the tie order); indexes of 1 have none.
SCHEMA_VERSION = 2
SETTINGS: dict[str, Any] = {
    "number_of_shards": 1,
    "number_of_replicas": 0,
    "refresh_interval": "-1",
    "similarity": {"semoe_bm25": BM25},
}
PROPERTIES: dict[str, Any] = {
    "id": {"type": "keyword"},
    "title": {"type": "text", "similarity": "semoe_bm25"},
    "text": {"type": "text", "similarity": "semoe_bm25"},
    "row": {"type": "long"},
}
SORT = [{"_score": "desc"}, {"row": "asc"}]  # ties: corpus order
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,254}$")


def _redact(url: str) -> str:
    """The URL without any user:password part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _auth_from_secret(value: Any, block: str) -> dict[str, Any]:
    """Client auth kwargs from a Secret block's value (string API key or a JSON mapping)."""
    if isinstance(value, str) and value:
        return {"api_key": value}
    if isinstance(value, dict) and value.get("api_key"):
        return {"api_key": value["api_key"]}
    if isinstance(value, dict) and value.get("username") and value.get("password"):
        return {"basic_auth": (value["username"], value["password"])}
    raise RetrievalError(
        f'Secret block {block!r} must hold an API key string, {{"api_key": ...}} '
        'or {"username": ..., "password": ...}'
    )


def _secret_value(block: str) -> Any:
    from prefect.blocks.system import Secret

    try:
        return Secret.load(block, _sync=True).get()
    except ValueError as e:
        raise RetrievalError(f"cannot load Prefect Secret block {block!r}: {e}") from None


def _auth(secret_block: str | None = None) -> tuple[dict[str, Any], str]:
    """Client auth kwargs and a description of where they came from (for messages):
    the environment first, then the named Prefect Secret block."""
    api_key = os.environ.get("SEMOE_ES_API_KEY")
    user, password = os.environ.get("SEMOE_ES_USER"), os.environ.get("SEMOE_ES_PASSWORD")
    kwargs: dict[str, Any] = {}
    if os.environ.get("SEMOE_ES_CA_CERTS"):
        kwargs["ca_certs"] = os.environ["SEMOE_ES_CA_CERTS"]
    if api_key:
        return {**kwargs, "api_key": api_key}, "SEMOE_ES_API_KEY"
    if user or password:
        if not (user and password):
            raise RetrievalError("set both SEMOE_ES_USER and SEMOE_ES_PASSWORD (or SEMOE_ES_API_KEY)")
        return {**kwargs, "basic_auth": (user, password)}, "SEMOE_ES_USER/SEMOE_ES_PASSWORD"
    if secret_block:
        return {
            **kwargs,
            **_auth_from_secret(_secret_value(secret_block), secret_block),
        }, f"Secret block {secret_block!r}"
    return kwargs, "no credentials (set SEMOE_ES_API_KEY, or SEMOE_ES_USER and SEMOE_ES_PASSWORD)"


def _error_reason(err: Exception) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        e = body["error"]
        return f"{e.get('type', 'error')}: {e.get('reason', '')}".strip()
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return str(getattr(err, "message", None) or err)


@RETRIEVERS.register("elasticsearch", "BM25 on an Elasticsearch server (SEMOE_ES_URL)")
class ElasticsearchRetriever(Retriever):
    """BM25 over title+text in an Elasticsearch index named after the corpus."""

    def __init__(self, cfg: "RetrievalConfig", index_dir: Path, corpus_key: str):
        super().__init__(cfg, index_dir, corpus_key)
        self.url = (cfg.es_url or os.environ.get("SEMOE_ES_URL") or "").strip()
        self.index_name = (cfg.es_index or f"semoe-{corpus_key[:16]}").lower()
        if not _INDEX_NAME.match(self.index_name):
            raise RetrievalError(
                f"invalid Elasticsearch index name {self.index_name!r}: use lower-case letters, digits, '.', '_', '-'"
            )
        self._client: "Elasticsearch | None" = None
        self._schema_checked = False

    @property
    def display_url(self) -> str:
        return _redact(self.url) if self.url else "<no URL>"

    def _fail(self, err: Exception) -> RetrievalError:
        """One readable message for any transport or API failure, naming the server."""
        from elastic_transport import ConnectionError as ConnectError
        from elastic_transport import ConnectionTimeout, TransportError
        from elasticsearch import (
            ApiError,
            AuthenticationException,
            AuthorizationException,
            NotFoundError,
            UnsupportedProductError,
        )

        where = f"Elasticsearch at {self.display_url}"
        detail = getattr(err, "message", None) or str(err)
        if isinstance(err, ConnectionTimeout):
            return RetrievalError(f"{where} is unreachable: no answer in time ({detail})")
        if isinstance(err, ConnectError):
            return RetrievalError(f"{where} is unreachable: {detail}")
        if isinstance(err, TransportError):
            return RetrievalError(f"{where} failed: {detail}")
        if isinstance(err, UnsupportedProductError):
            return RetrievalError(f"the server at {self.display_url} is not Elasticsearch: {err}")
        if isinstance(err, AuthenticationException):
            _, source = _auth(self.cfg.es_secret_block)
            return RetrievalError(f"{where} rejected the credentials (HTTP 401; used {source}): {_error_reason(err)}")
        if isinstance(err, AuthorizationException):
            return RetrievalError(f"{where} refused the request (HTTP 403, missing privileges): {_error_reason(err)}")
        if isinstance(err, NotFoundError):
            return RetrievalError(
                f"{where}: index {self.index_name!r} not found; build it first ({_error_reason(err)})"
            )
        if isinstance(err, ApiError):
            reason = _error_reason(err)
            if "compatible-with" in reason or "media_type_header" in reason:
                import elasticsearch

                major = int(elasticsearch.__versionstr__.split(".")[0])
                return RetrievalError(
                    f"{where} does not accept the installed elasticsearch client {elasticsearch.__versionstr__} "
                    f"(server older than the client?); install a client of the server's major version, "
                    f"e.g. pip install 'elasticsearch>={major - 1},<{major}': {reason}"
                )
            return RetrievalError(f"{where} answered HTTP {getattr(err, 'status_code', '?')}: {reason}")
        return RetrievalError(f"{where}: {err}")

    def _connect(self) -> "Elasticsearch":
        """The client, after one quick check that the server answers and accepts us."""
        if self._client is not None:
            return self._client
        if not self.url:
            raise RetrievalError("no Elasticsearch URL: set retrieval.es_url or the SEMOE_ES_URL environment variable")
        from elastic_transport import TransportError
        from elasticsearch import ApiError, Elasticsearch

        auth, _ = _auth(self.cfg.es_secret_block)
        try:
            client = Elasticsearch(
                self.url, request_timeout=REQUEST_TIMEOUT_S, max_retries=2, retry_on_timeout=False, **auth
            )
        except (ValueError, TypeError) as e:
            raise RetrievalError(f"invalid Elasticsearch URL {self.display_url}: {e}") from None
        try:
            client.options(request_timeout=PING_TIMEOUT_S, max_retries=0).info()
        except (TransportError, ApiError) as e:
            client.close()
            raise self._fail(e) from None
        self._client = client
        return client

    def _meta(self) -> dict | None:
        """The index's ``_meta`` mapping, or None when the index does not exist."""
        from elastic_transport import TransportError
        from elasticsearch import ApiError, NotFoundError

        es = self._connect()
        try:
            resp = es.indices.get_mapping(index=self.index_name)
        except NotFoundError:
            return None
        except (TransportError, ApiError) as e:
            raise self._fail(e) from None
        for entry in dict(resp).values():
            return (entry.get("mappings") or {}).get("_meta") or {}
        return None

    def is_built(self) -> bool:
        meta = self._meta()
        return (
            bool(meta)
            and meta.get("semoe_complete") is True
            and meta.get("corpus_key") == self.corpus_key
            and meta.get("schema_version") == SCHEMA_VERSION
        )

    def _check_schema(self) -> None:
        """Once per retriever: the index exists and has this code's document layout (an older
        one has no ``row`` to sort ties by)."""
        if self._schema_checked:
            return
        meta = self._meta()
        where = f"Elasticsearch at {self.display_url}: index {self.index_name!r}"
        if meta is None:
            raise RetrievalError(f"{where} not found; build it first")
        version = meta.get("schema_version", 1)
        if version != SCHEMA_VERSION:
            raise RetrievalError(
                f"{where} has schema version {version}, this semoe reads {SCHEMA_VERSION} "
                "(documents need their corpus row for the tie order); rebuild it with semoe index"
            )
        self._schema_checked = True

    def build(self, passages: Iterable[Passage], total: int | None = None) -> dict:
        from elastic_transport import TransportError
        from elasticsearch import ApiError
        from elasticsearch.helpers import BulkIndexError, streaming_bulk
        from tqdm import tqdm

        es = self._connect()
        started = time.perf_counter()
        meta = {"semoe_complete": False, "corpus_key": self.corpus_key, "bm25": BM25, "schema_version": SCHEMA_VERSION}
        n = 0
        try:
            es.options(ignore_status=404).indices.delete(index=self.index_name)
            es.indices.create(
                index=self.index_name,
                settings=SETTINGS,
                mappings={"dynamic": "strict", "_meta": meta, "properties": PROPERTIES},
            )
            progress = tqdm(total=total, unit=" passages", unit_scale=True, desc="elasticsearch index", mininterval=1.0)
            with progress:
                for ok, _ in streaming_bulk(
                    es,
                    self._actions(passages),
                    chunk_size=self.cfg.bulk_batch_size,
                    max_retries=3,
                    initial_backoff=2,
                    max_backoff=60,
                    raise_on_error=True,
                ):
                    n += ok
                    progress.update(1)
            es.indices.put_settings(index=self.index_name, settings={"refresh_interval": None})
            es.indices.refresh(index=self.index_name)
            seconds = round(time.perf_counter() - started, 3)
            done = {**meta, "semoe_complete": True, "passages": n, "seconds": seconds}
            es.indices.put_mapping(index=self.index_name, meta=done)
        except BulkIndexError as e:
            first = e.errors[0] if e.errors else {}
            raise RetrievalError(
                f"Elasticsearch at {self.display_url} rejected {len(e.errors)} passage(s) while indexing "
                f"{self.index_name!r}; first: {json.dumps(first, default=str)[:500]}"
            ) from None
        except (TransportError, ApiError) as e:
            raise self._fail(e) from None
        self._write_manifest({"passages": n, "seconds": seconds})
        return {"passages": n, "seconds": seconds}

    def _actions(self, passages: Iterable[Passage]) -> Iterator[dict]:
        for row, p in enumerate(passages):
            yield {
                "_index": self.index_name,
                "_id": str(p.id),
                "_source": {"id": str(p.id), "title": p.title or "", "text": p.text or "", "row": row},
            }

    def _write_manifest(self, stats: dict) -> None:
        """A local record of where the index lives (the server-side _meta is authoritative)."""
        self.index_dir.mkdir(parents=True, exist_ok=True)
        manifest = {
            "backend": "elasticsearch",
            "corpus_key": self.corpus_key,
            "url": self.display_url,
            "index": self.index_name,
            "bm25": BM25,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **stats,
        }
        self.write_manifest(manifest)

    def _body(self, query: str, k: int) -> dict:
        return {
            "size": k,
            "track_total_hits": False,
            "sort": SORT,
            "track_scores": True,
            "_source": ["id", "title", "text"],
            "query": {"multi_match": {"query": query, "fields": ["title", "text"], "type": "most_fields"}},
        }

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        from elastic_transport import TransportError
        from elasticsearch import ApiError

        results: list[list[Hit]] = [[] for _ in queries]
        todo = [(i, q) for i, q in enumerate(queries) if q and q.strip()] if k >= 1 else []
        if not todo:
            return results
        self._check_schema()
        es = self._connect()
        for start in range(0, len(todo), MSEARCH_BATCH):
            chunk = todo[start : start + MSEARCH_BATCH]
            searches: list[dict] = []
            for _, q in chunk:
                searches += [{}, self._body(q, k)]
            try:
                responses = es.msearch(index=self.index_name, searches=searches)["responses"]
            except (TransportError, ApiError) as e:
                raise self._fail(e) from None
            for (i, _), resp in zip(chunk, responses):
                if "error" in resp:
                    err = resp["error"]
                    reason = f"{err.get('type')}: {err.get('reason')}" if isinstance(err, dict) else str(err)
                    raise RetrievalError(f"Elasticsearch at {self.display_url}, index {self.index_name!r}: {reason}")
                results[i] = [
                    Hit(passage=self._passage(h["_source"]), score=float(h["_score"]), rank=rank)
                    for rank, h in enumerate(resp["hits"]["hits"], start=1)
                ]
        return results

    @staticmethod
    def _passage(source: dict) -> Passage:
        return Passage(id=source["id"], title=source.get("title") or "", text=source.get("text") or "")

    def drop(self) -> None:
        """Delete the server index and the local manifest (tests, or forcing a rebuild)."""
        from elastic_transport import TransportError
        from elasticsearch import ApiError

        es = self._connect()
        try:
            es.options(ignore_status=404).indices.delete(index=self.index_name)
        except (TransportError, ApiError) as e:
            raise self._fail(e) from None
        self.manifest_path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
