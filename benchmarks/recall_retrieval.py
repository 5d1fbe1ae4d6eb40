"""Recall@k of retrieval variants on real question sets, each over its own corpus.

- 2WikiMultihopQA open: ``2wikimultihopqa/open_1000_questions.json`` over
  ``open_corpus_6119.json``; gold = the supporting-fact titles.
- PopQA: ``popqa/first1000_with_paragraphs.json``, its paragraphs as the corpus; gold =
  the paragraphs marked ``is_supporting`` (by title).

recall@k is semoe's own (``semoe.metrics.recall_at_k``: share of gold titles among the
top k), averaged over the questions that have a gold. Data are read by the registered
loaders, as a pipeline run reads them.

    python benchmarks/recall_retrieval.py                      # ../shared/data beside the repo
    python benchmarks/recall_retrieval.py --data /path/to/data --k 3,10
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from semoe.config import CorpusConfig, DatasetConfig, RetrievalConfig
from semoe.data import DataContext
from semoe.data.loading import iter_passages, load_examples
from semoe.metrics import recall_at_k
from semoe.retrieval import RETRIEVERS

ENGLISH = {"stopwords": "english", "stemmer": "english"}
VARIANTS = {
    "tantivy (default analyzer)": ("tantivy", {}),
    "tantivy + English analyzer": ("tantivy", ENGLISH),
    "bm25s + English analyzer": ("bm25s", ENGLISH),
}
QUESTION_SETS = {
    "2wiki-open": (
        DatasetConfig(name="2wikimultihopqa", path="2wikimultihopqa/open_1000_questions.json"),
        CorpusConfig(format="json-passages", path="2wikimultihopqa/open_corpus_6119.json"),
    ),
    "popqa": (
        DatasetConfig(name="popqa", path="popqa/first1000_with_paragraphs.json"),
        CorpusConfig(format="dataset-contexts", path="popqa/first1000_with_paragraphs.json"),
    ),
}


def recall(question_set: str, backend: str, options: dict, data: Path, ks: list[int], work: Path) -> dict[int, float]:
    """Mean recall@k for each k in ``ks`` of one variant on one question set."""
    from semoe.config import SyntheticConfig

    dataset, corpus = QUESTION_SETS[question_set]
    dataset = dataset.model_copy(update={"path": str(data / dataset.path)})
    corpus = corpus.model_copy(update={"path": str(data / corpus.path)})
    ctx = DataContext(synthetic=SyntheticConfig())
    examples = load_examples(dataset, ctx)
    cfg = RetrievalConfig(backend=backend, options=options)
    retriever = RETRIEVERS.get(backend)(
        cfg, work / f"{question_set}-{backend}-{json.dumps(options, sort_keys=True)}", "r"
    )
    try:
        if not retriever.is_built():
            retriever.build(iter_passages(corpus, ctx))
        hits = retriever.search([ex.question for ex in examples], max(ks))
    finally:
        retriever.close()
    out = {}
    for k in ks:
        values = [
            recall_at_k(
                [h.passage.id for h in hs[:k]], [h.passage.title for h in hs[:k]], ex.gold_passage_ids, ex.gold_titles
            )
            for ex, hs in zip(examples, hits)
        ]
        values = [v for v in values if v is not None]
        out[k] = sum(values) / len(values)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--k", default="3,10", help="comma-separated cut-offs")
    args = ap.parse_args()
    data, ks = Path(args.data), [int(k) for k in args.k.split(",")]
    if not (data / "popqa").is_dir():
        raise SystemExit(f"no question sets under {data} (give --data)")
    with tempfile.TemporaryDirectory(prefix="semoe-recall-") as tmp:
        table = {
            (qs, label): recall(qs, backend, options, data, ks, Path(tmp))
            for qs in QUESTION_SETS
            for label, (backend, options) in VARIANTS.items()
        }
    cols = [f"{qs} R@{k}" for qs in QUESTION_SETS for k in ks]
    print(f"{'variant':<30}" + "".join(f"{c:>16}" for c in cols))
    for label in VARIANTS:
        print(f"{label:<30}" + "".join(f"{table[(qs, label)][k]:>16.3f}" for qs in QUESTION_SETS for k in ks))


if __name__ == "__main__":
    main()
