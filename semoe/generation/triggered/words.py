"""Words of a generated step: which are content words (DRAGIN's s_i indicator) and which
tokens make up a word.

DRAGIN (github.com/oneal2000/DRAGIN, ``src/generate.py``) keeps NOUN, ADJ, VERB, PROPN and NUM
tokens by spaCy POS tags; here a stopword list stands in for it, so no tagger is loaded.
"""

from __future__ import annotations

from typing import Sequence

# Function words (and contraction remnants: "'s" -> "s") that cannot carry the fact a
# retrieval is for; stands in for DRAGIN's spaCy filter (NOUN, ADJ, VERB, PROPN, NUM kept).
STOPWORDS = frozenset(
    """a an the this that these those some any each every either neither no all both few many much more most
    other such own same i me my mine myself we us our ours ourselves you your yours yourself yourselves he him
    his himself she her hers herself it its itself they them their theirs themselves what which who whom whose
    whoever whatever when where why how there here then than so too very just only also not nor or and but if
    because as until while of at by for with about against between into through during before after above
    below to from up down in out on off over under again further once am is are was were be been being have
    has had having do does did doing done will would shall should can could may might must ought let lets
    s t re ve ll d m yes""".split()
)
_PUNCT = "\"'“”‘’`.,;:!?()[]{}<>-–—…*_/\\|"


def is_content_word(word: str) -> bool:
    """Whether ``word`` (spaces and punctuation around it allowed) can carry a fact: it has a
    letter or digit and is no stopword."""
    core = word.strip().strip(_PUNCT).lower()
    return any(ch.isalnum() for ch in core) and core not in STOPWORDS


def query_word(word: str) -> str:
    """``word`` as a query holds it: without the spaces and punctuation around it."""
    return word.strip().strip(_PUNCT)


def word_spans(pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Token ranges [start, end) of whitespace-separated words (DRAGIN merges sub-tokens the
    same way, so attention and entropy are judged per word)."""
    spans: list[list[int]] = []
    for i, p in enumerate(pieces):
        if not spans or p[:1].isspace() or pieces[i - 1].endswith("\n"):
            spans.append([i, i + 1])
        else:
            spans[-1][1] = i + 1
    return [(s, e) for s, e in spans]
