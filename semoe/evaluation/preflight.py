"""Preflight: every check that can run before a run starts, so bad input fails with one clear
error and no run row."""

from __future__ import annotations

from semoe.checks import check_config
from semoe.config import SemoeConfig
from semoe.data import DataContext
from semoe.data.loading import check_corpus_head, corpus_key, load_examples
from semoe.evaluation.passage_sources import needs_index
from semoe.evaluation.run_ids import qa_run_id
from semoe.indexing import open_retriever
from semoe.models.loading import check_model_spec
from semoe.storage.artifacts import ArtifactCache
from semoe.storage.results import ResultStore


def preflight(cfg: SemoeConfig) -> str:
    """Check everything that can be checked before a run starts, so bad input fails with
    one clear error and no run row: registered names, the results store (locked?), the
    artifact cache (writable?), the dataset files (parsed whole: they are small), the
    corpus file (its first passages, :func:`~semoe.data.loading.check_corpus_head`), the
    retrieval backend (an Elasticsearch ping) and the model spec. Imports no Prefect and
    starts no server: ``semoe run`` calls it before the flow, ``semoe validate`` alone.
    Returns the id of the QA run these inputs make (``qa_run_id``)."""

    check_config(cfg)
    ResultStore(cfg.store.path)
    ArtifactCache(cfg.cache.root).check_writable()
    ctx = DataContext.of(cfg)
    examples = {ds.display_name: load_examples(ds, ctx) for ds in cfg.datasets}
    key = corpus_key(cfg.corpus, ctx) if needs_index(cfg, examples) else None
    if key is not None:
        check_corpus_head(cfg.corpus, ctx)
        open_retriever(cfg, key).is_built()
    check_model_spec(cfg.model.spec)
    return qa_run_id(cfg, examples, key, required=False)  # the pipeline builds missing translators first
