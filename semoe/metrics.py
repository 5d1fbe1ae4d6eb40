"""Answer metrics exactly as DRAGIN/PRAG compute them (SQuAD normalisation), and recall@k.

``golds`` is every acceptable answer (gold first, then aliases); a prediction scores the
maximum over them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_SPECIAL = ("yes", "no", "noanswer")


def normalize_answer(s: str) -> str:
    """Lower-case, strip punctuation, drop articles, collapse whitespace (SQuAD)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _as_list(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _as_list(golds)))


def _f1_single(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in _SPECIAL or ref in _SPECIAL) and pred != ref:
        return 0.0
    pred_tokens, ref_tokens = pred.split(), ref.split()
    common = Counter(pred_tokens) & Counter(ref_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: str | Sequence[str]) -> float:
    return max((_f1_single(prediction, g) for g in _as_list(golds)), default=0.0)


def recall_at_k(
    retrieved_ids: Iterable[str],
    retrieved_titles: Iterable[str],
    gold_ids: Sequence[str],
    gold_titles: Sequence[str],
) -> float | None:
    """Fraction of gold passages found among the retrieved ones; None when no gold is known.

    Gold ids are used when known (synthetic corpus); otherwise gold titles
    (2Wiki/HotpotQA supporting facts), compared case-insensitively.
    """
    if gold_ids:
        got = set(retrieved_ids)
        return sum(g in got for g in set(gold_ids)) / len(set(gold_ids))
    if gold_titles:
        got = {t.strip().lower() for t in retrieved_titles}
        golds = {t.strip().lower() for t in gold_titles}
        return sum(g in got for g in golds) / len(golds)
    return None
