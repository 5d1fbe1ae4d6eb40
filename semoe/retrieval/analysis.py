"""Text analysis shared by the embedded BM25 backends: what turns a passage or a query
into index terms (tokens, lowercasing, stop words, stemming).

One definition serves tantivy (registered as the fields' tokenizer and applied to
queries) and bm25s (which receives the terms), so two backends configured alike index
exactly the same terms. The analyzer decides what an index holds: it is part of the
index identity (``AnalyzerParams.index_identity``), so an index built with another
analyzer is never reused.

- tokens: maximal runs of letters and digits (tantivy's ``simple`` tokenizer); tokens
  longer than 40 bytes are dropped (tantivy's ``default`` tokenizer does the same).
- ``stopwords: english``: Lucene's English stop set (33 words: a, an, and, ..., with), the
  ``_english_`` set of Elasticsearch and bm25s's ``"en"``; or a list of words.
- ``stemmer: english``: Snowball English (Porter2), as Elasticsearch's ``porter2`` stemmer
  and PyStemmer's ``english`` used by bm25s/FlashRAG.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import tantivy
from pydantic import BaseModel, ConfigDict, Field, field_validator

from semoe.hashing import digest

if TYPE_CHECKING:
    import tantivy

MAX_TOKEN_BYTES = 40
# tantivy's own name for simple + remove_long(40) + lowercase: indexes built before the
# analyzer was configurable used it, so the default analyzer keeps reusing them.
DEFAULT_TOKENIZER = "default"


class AnalyzerParams(BaseModel):
    """``retrieval.options`` keys that choose the analyzer (defaults: lowercase only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lowercase: bool = Field(True, description="lowercase terms (queries and passages alike)")
    stopwords: Literal["none", "english"] | list[str] = Field(
        "none", description="drop these words: none, english (Lucene/Elasticsearch `_english_`), or a list"
    )
    stemmer: Literal["none", "english"] = Field("none", description="english: Snowball English (Porter2)")

    @field_validator("stopwords")
    @classmethod
    def _clean_list(cls, v):
        if isinstance(v, list):
            if not v or not all(isinstance(w, str) and w.strip() for w in v):
                raise ValueError("a stop word list must hold non-empty words")
            return sorted({w.strip() for w in v})  # order and repeats do not change the analyzer
        return v

    def analyzer_identity(self) -> dict:
        """The analyzer as recorded in an index manifest ({} for the default analyzer, so
        indexes built before it was configurable stay valid)."""
        d = AnalyzerParams.model_dump(self, mode="json", include=set(AnalyzerParams.model_fields))
        return {} if d == AnalyzerParams().model_dump(mode="json") else d

    def index_identity(self) -> dict:
        """Settings that change what an index holds ({} for the default analyzer)."""
        ident = self.analyzer_identity()
        return {"analyzer": ident} if ident else {}

    def tokenizer_name(self) -> str:
        """Name under which the analyzer is registered on a tantivy index."""

        ident = self.analyzer_identity()
        return f"semoe-{digest(ident, 12)}" if ident else DEFAULT_TOKENIZER

    def text_analyzer(self) -> "tantivy.TextAnalyzer":
        """The tantivy analyzer; ``.analyze(text)`` gives the terms of a text in order."""

        builder = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(
            tantivy.Filter.remove_long(MAX_TOKEN_BYTES)
        )
        if self.lowercase:
            builder = builder.filter(tantivy.Filter.lowercase())
        # Stop words before stemming (as Lucene and Elasticsearch do): the lists hold
        # surface forms ("was"), which the stemmer would change.
        if self.stopwords == "english":
            builder = builder.filter(tantivy.Filter.stopword("english"))
        elif isinstance(self.stopwords, list):
            words = [w.lower() for w in self.stopwords] if self.lowercase else self.stopwords
            builder = builder.filter(tantivy.Filter.custom_stopword(words))
        if self.stemmer == "english":
            builder = builder.filter(tantivy.Filter.stemmer("english"))
        return builder.build()
