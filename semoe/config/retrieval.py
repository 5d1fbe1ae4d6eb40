"""The ``retrieval:`` section: which BM25 backend, how many passages, where its server is."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, field_validator

from semoe.config.base import Section


class RetrievalConfig(Section):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)  # es_url may carry a password

    operational = ("es_url", "es_index", "es_secret_block", "bulk_batch_size", "writer_heap_mb", "search_threads")

    backend: str = Field("tantivy", description="registered retriever: tantivy (embedded) or elasticsearch")
    top_k: int = Field(3, ge=1, le=100)
    es_url: str | None = Field(None, description="Elasticsearch URL; falls back to env SEMOE_ES_URL")
    es_index: str | None = Field(None, description="index name; default derived from the corpus key")
    es_secret_block: str | None = Field(
        None, description="Prefect Secret block with the Elasticsearch API key (or {username, password}); env wins"
    )
    bulk_batch_size: int = Field(2000, ge=1)
    writer_heap_mb: int = Field(256, ge=16)

    search_threads: int | None = Field(
        None, ge=1, description="threads searching one batch of queries (tantivy, bm25s); None: all CPU cores"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="the backend's own settings, e.g. the analyzer (see its Params model)"
    )

    @field_validator("es_url")
    @classmethod
    def _no_credentials_in_url(cls, v: str | None) -> str | None:
        if v and (urlsplit(v).username is not None or urlsplit(v).password is not None):
            raise ValueError(
                "must not contain credentials (configs are stored with results); use SEMOE_ES_API_KEY, "
                "SEMOE_ES_USER + SEMOE_ES_PASSWORD, or retrieval.es_secret_block"
            )
        return v
