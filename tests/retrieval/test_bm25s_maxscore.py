"""The bm25s backend's exact top-k with MaxScore pruning (``ScoreMatrix``) against an
exhaustive dense recomputation from the same CSC matrix, on seeded random Zipf corpora."""

from __future__ import annotations

import numpy as np
import pytest

from semoe.retrieval.backends.bm25s_bm25 import ScoreMatrix
from semoe.retrieval.base import RetrievalError


def zipf_matrix(seed: int, n_docs: int, vocab: int, words: tuple[int, int], everywhere: bool = False):
    """(data, indices, indptr) of Lucene BM25 scores (k1 1.2, b 0.75, float32, as bm25s
    stores them) over passages of Zipf-drawn words; the last term is never used (an empty
    column). ``everywhere``: term 0 is in every passage. Equal passage lengths
    (``words[0] == words[1]``) make many equal scores."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, vocab))
    lengths = rng.integers(words[0], words[1] + 1, size=n_docs)
    rows = np.repeat(np.arange(n_docs), lengths)
    cols = np.minimum(np.searchsorted(cdf, rng.random(rows.size) * cdf[-1]), vocab - 2)
    if everywhere:
        rows, cols = np.concatenate([rows, np.arange(n_docs)]), np.concatenate([cols, np.zeros(n_docs, int)])
        lengths = lengths + 1
    pairs, tf = np.unique(cols * n_docs + rows, return_counts=True)  # sorted by (term, row)
    cols, rows, tf = pairs // n_docs, pairs % n_docs, tf.astype(np.float64)
    df = np.bincount(cols, minlength=vocab)
    idf = np.log(1 + (n_docs - df + 0.5) / (df + 0.5))
    scores = idf[cols] * tf / (tf + 1.2 * (1 - 0.75 + 0.75 * lengths[rows] / lengths.mean()))
    indptr = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    return scores.astype(np.float32), rows.astype(np.int32), indptr


def exhaustive(data, indices, indptr, n_docs: int, term_ids, k: int) -> list[tuple[int, float]]:
    """The reference: every row's float64 sum over the distinct query terms, added by the
    terms' maximum score descending, then term id; all rows with score > 0 sorted by (score
    desc, row asc), the first k."""
    acc = np.zeros(n_docs, dtype=np.float64)
    maxima = {t: float(data[indptr[t] : indptr[t + 1]].max(initial=0)) for t in set(term_ids)}
    for t in sorted(maxima, key=lambda t: (-maxima[t], t)):
        a, b = indptr[t], indptr[t + 1]
        acc[indices[a:b]] += data[a:b]
    rows = np.flatnonzero(acc > 0)
    order = np.lexsort((rows, -acc[rows]))[:k]
    return [(int(rows[i]), float(acc[rows[i]])) for i in order]


def queries(rng, vocab: int, n: int) -> list[list[int]]:
    """Query term ids of every shape: Zipf-drawn words (so common terms), repeats, one term,
    the empty column (a term no passage holds), very rare terms."""
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    out = [[0], [vocab - 1], [vocab - 1, vocab - 2], [0, 1, 2, 3], [5, 5, 5], [0, 0, vocab - 2]]
    for _ in range(n):
        q = list(rng.choice(vocab, size=rng.integers(1, 12), p=p))
        if rng.random() < 0.3:
            q += list(rng.integers(0, vocab, size=2))  # rare terms
        if rng.random() < 0.2:
            q += q[:2]  # repeated terms
        out.append([int(t) for t in q])
    return out


CORPORA = {
    "varied lengths": dict(seed=1, n_docs=3000, vocab=2000, words=(20, 80)),
    "equal lengths (ties)": dict(seed=2, n_docs=3000, vocab=1500, words=(40, 40)),
    "a term in every passage": dict(seed=3, n_docs=2000, vocab=1000, words=(10, 60), everywhere=True),
}


@pytest.mark.parametrize("corpus", list(CORPORA))
def test_hits_and_scores_equal_the_exhaustive_top_k(corpus):
    spec = CORPORA[corpus]
    data, indices, indptr = zipf_matrix(**spec)
    n_docs = spec["n_docs"]
    matrix = ScoreMatrix(data, indices, indptr, n_docs)
    rng = np.random.default_rng(spec["seed"])
    shapes = {"tie at k": 0, "fewer than k": 0, "one essential term": 0, "several": 0, "pruned": 0}
    for q in queries(rng, spec["vocab"], 100):
        for k in (1, 3, 10, 40):
            reference = exhaustive(data, indices, indptr, n_docs, q, k)
            hits, stats = matrix.top_k(q, k)
            assert hits == reference, (q, k)  # rows, order and float64 scores, bit for bit
            full = exhaustive(data, indices, indptr, n_docs, q, k + 1)
            shapes["tie at k"] += len(full) > k and full[k - 1][1] == full[k][1]
            shapes["fewer than k"] += len(hits) < k
            shapes["one essential term" if stats.essential == 1 else "several"] += 1
            shapes["pruned"] += stats.essential < stats.terms
    assert all(shapes.values()), f"every shape is exercised: {shapes}"


def test_absent_terms_and_k_below_one():
    data, indices, indptr = zipf_matrix(seed=4, n_docs=500, vocab=300, words=(10, 30))
    matrix = ScoreMatrix(data, indices, indptr, 500)
    assert matrix.top_k([299], 3)[0] == [], "a term no passage holds matches nothing"
    assert matrix.top_k([], 3)[0] == []
    assert matrix.top_k([1, 2], 0)[0] == []
    assert matrix.top_k([299, 7], 3)[0] == exhaustive(data, indices, indptr, 500, [7], 3)


def test_pruning_scores_far_fewer_rows_than_the_postings():
    """One rare term among very common ones: θ from the rare term's rows makes the common
    terms non-essential, so their long postings are only probed, never read whole."""
    n_docs, vocab = 20000, 4000
    data, indices, indptr = zipf_matrix(seed=5, n_docs=n_docs, vocab=vocab, words=(60, 120))
    matrix = ScoreMatrix(data, indices, indptr, n_docs)
    lengths = np.diff(indptr)
    rare = [int(t) for t in np.argsort(lengths, kind="stable") if lengths[t] > 0][:50]
    assert lengths[rare[-1]] < 100 < lengths[5]
    postings = read = scored = 0
    for t in rare:
        q = [t, 0, 1, 2, 3, 4, 5]
        hits, stats = matrix.top_k(q, 3)
        assert hits == exhaustive(data, indices, indptr, n_docs, q, 3)
        assert stats.postings == sum(int(lengths[u]) for u in q)
        postings += stats.postings
        read += stats.essential_postings
        scored += stats.seed + stats.scored
    assert read < postings / 100 and scored < postings / 100, (read, scored, postings)


def test_max_scores_per_column_with_empty_columns():
    data = np.array([0.5, 2.0, 1.0, 3.0, 0.25], dtype=np.float32)
    indices = np.array([0, 3, 1, 2, 0], dtype=np.int32)
    indptr = np.array([0, 0, 2, 2, 4, 5, 5], dtype=np.int64)  # columns 0, 2 and 5 are empty
    matrix = ScoreMatrix(data, indices, indptr, 4)
    assert matrix.max_scores.tolist() == [0.0, 2.0, 0.0, 3.0, 0.25, 0.0]


def test_unsorted_columns_are_sorted_at_load():
    data, indices, indptr = zipf_matrix(seed=6, n_docs=800, vocab=400, words=(10, 40))
    shuffled_data, shuffled_indices = data.copy(), indices.copy()
    rng = np.random.default_rng(0)
    for t in range(400):
        a, b = indptr[t], indptr[t + 1]
        perm = a + rng.permutation(b - a)
        shuffled_data[a:b], shuffled_indices[a:b] = data[perm], indices[perm]
    assert not np.array_equal(shuffled_indices, indices)
    shuffled_indices.flags.writeable = False  # as from a read-only mapping: copied, not written
    matrix = ScoreMatrix(shuffled_data, shuffled_indices, indptr, 800)
    assert np.array_equal(matrix.indices, indices) and np.array_equal(matrix.data, data)
    for q in ([0, 1, 2], [3, 50, 51, 300], [9]):
        assert matrix.top_k(q, 3)[0] == exhaustive(data, indices, indptr, 800, q, 3)


@pytest.mark.parametrize(
    "data, indices, message",
    [
        ([1.0, -0.5, 2.0], [0, 1, 0], "negative"),
        ([1.0, 0.5, 2.0], [1, 1, 0], "a row twice"),
    ],
)
def test_matrix_maxscore_cannot_be_exact_on_is_refused(data, indices, message):
    with pytest.raises(RetrievalError, match=message):
        ScoreMatrix(np.array(data, np.float32), np.array(indices, np.int32), np.array([0, 2, 3]), 2)
