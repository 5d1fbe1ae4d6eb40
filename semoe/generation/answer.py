"""Sentence splitting and answer extraction for generated text.

Answer extraction follows DRAGIN (github.com/oneal2000/DRAGIN, ``src/data.py``
``get_real_prediction``) and PRAG (github.com/oneal2000/PRAG, ``src/utils.py`` ``evaluate``):
both take the text after the *first* ``"the answer is"`` (``str.find``); DRAGIN keeps the
rest of the output minus a final ".", PRAG cuts it at the first ".", "\\n" or ",". Here:

* the first ``"the answer is"`` that introduces an answer is used, as in both; an occurrence
  that closes its sentence with nothing after it ("I wonder what the answer is.") is skipped
  (deviation: both would return the rest of the text there). The first, not the last,
  because a model that runs on after answering writes further "the answer is" for questions
  it invents itself;
* it is matched case-insensitively and as words ("The answer is X" in non-CoT replies;
  "the answer isn't" is no marker) (deviation: both match the lower-case phrase anywhere);
* the answer is the first sentence after it, by :func:`sentence_ends` (deviation: PRAG's cut
  at the first "." or "," turns "St. Louis, Missouri" into "St"; DRAGIN keeps any sentences
  that follow);
* without the phrase, the first sentence (or line) of the text is the answer, and
  :func:`has_answer_marker` is False: each prediction records it (``answer_marker_found``),
  since such a fallback answer is a guess at where the answer is.

Prompts ask for a closing sentence that starts with ``ANSWER_LEAD`` (``semoe.generation.prompts``),
which ``ANSWER_MARKER`` matches.

:func:`sentence_ends` is the one sentence rule of the package (the triggered methods split
and stop on it too). Terminators carry their closing quotes/brackets. A sentence ends

* at a newline;
* at "!", "?" or an ellipsis followed by whitespace, unless a lower-case word follows
  ('"Why?" she asked', "Well... maybe");
* at a period followed by whitespace, unless the period belongs to a title, rank or saint
  ("Dr.", "Gen.", "St.", "Mt.", "v.", "vs."), to a numbering word before a number ("No. 5",
  "Jan. 5", "c. 1200"), or to an initial ("J. R. R. Tolkien"), a dotted acronym ("U.S.",
  "D.C.") or a word like "Jr.", "Inc.", "etc." followed by a lower-case word, a number or
  a capitalised word that does not open sentences ("U.S. Army", "Jr. Day"; but "D.C. He").

Decimals ("3.5") never end one: no whitespace follows their point. The word lists stand in
for Punkt's learnt abbreviations (nltk), whose model is a download.
"""

from __future__ import annotations

import re

ANSWER_LEAD = "The answer is"  # what prompts ask a reply's closing sentence to start with
ANSWER_MARKER = re.compile(r"\bthe\s+answer\s+is\b", re.IGNORECASE)
_MARKER_TAIL = re.compile(r"\s*[:：]?")
# The phrase closes its own sentence ("... what the answer is. So ..."): no answer follows.
_NO_ANSWER = re.compile(r"\s*[.!?](?![.\w])")

# A candidate end: newlines, or terminal punctuation with the closers that belong to it.
_CANDIDATE = re.compile(r"\n+|(?P<punct>[.!?…]+)[\"'”’)\]]*")
_OPENING = "\"'“‘([{"
_QUOTES = "\"'“”‘’*"

# Periods of these words never end a sentence (titles, ranks, saints, "v." of court cases).
_NEVER_FINAL = frozenset(
    """mr mrs ms mx dr prof rev fr msgr hon pres gov sen rep gen col lt capt cpt cmdr cdr comdr maj adm brig
    sgt cpl pvt lieut det insp supt messrs mme mlle st ste sts mt ft pt rt v vs cf viz e.g i.e""".split()
)
# These do not end a sentence before a number ("No. 5", "Vol. 2", "c. 1200", "b. 1950").
_BEFORE_NUMBER = frozenset("no nos vol vols p pp art fig ch sec op c ca b d fl".split())
# These may end a sentence: they do only before a word that opens sentences.
_MAYBE_FINAL = frozenset(
    """jr sr inc ltd co corp bros plc etc al esq ave blvd rd hwy dept univ est approx
    jan feb mar apr jun jul aug sep sept oct nov dec
    ala ariz ark calif colo conn del fla ga kan ky md mich minn mo mont neb nev okla pa penn tenn tex va vt wis
    wyo""".split()
)
# Capitalised words that open sentences rather than continue a name ("D.C. He", "Jr. The").
# "A" and "I" are left out: they are initials too ("J. A. Smith").
_OPENERS = frozenset(
    """the an this that these those he she it they we you his her its their our my your there here in on at
    by for from with after before during since as when while if although though but and or so thus therefore
    hence however also then yet both each some many most all one what which who whom where why how is was are
    were not no yes question answer note because""".split()
)
_ACRONYM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
_NEXT_WORD = re.compile(r"\s*[\"'“‘(\[]*(\w*)")
_LEADING_ELLIPSIS = re.compile(r"^(?:\.{2,}|…)\s*")
_TERMINATOR = re.compile(r"[.!?…]+$")


def _period_kind(word: str) -> str:
    """How the period after ``word`` behaves: "final", "never", "number", "maybe" or
    "initial" (which behaves as "maybe")."""
    w = word.strip(_OPENING + "\"'”’)]")
    if len(w) == 1 and w.isupper():
        return "initial"
    low = w.lower()
    if low in _NEVER_FINAL:
        return "never"
    if low in _BEFORE_NUMBER:
        return "number"
    return "maybe" if low in _MAYBE_FINAL or _ACRONYM.fullmatch(w) else "final"


def _last_word(text: str) -> str:
    return text.rsplit(None, 1)[-1] if text.strip() else ""


def _ends_here(text: str, m: re.Match, final: bool) -> bool | None:
    """Whether candidate ``m`` ends a sentence; None: undecided until more text comes."""
    punct = m.group("punct")
    if punct is None:
        return True
    rest = text[m.end() :]
    if not rest:
        return True if final else None
    if not rest[0].isspace():  # "3.5", "U.S.", "e.g.,"
        return False
    nxt = _NEXT_WORD.match(rest)
    word = nxt.group(1)
    whole = nxt.end() < len(rest) or final  # else the next word may still grow
    if "\n" in rest[: nxt.start(1)]:
        return True
    kind = _period_kind(_last_word(text[: m.start()])) if punct == "." else "other"
    if kind in ("final", "never"):
        return kind == "final"
    if not word:
        return True if whole else None
    if kind == "other":  # "Well... maybe", '"Why?" asked' run on
        return not word[0].islower()
    if word[0].isdigit():
        return False
    if kind == "number":
        return True
    if word[0].islower():
        return False
    return word.lower() in _OPENERS if whole else None


def sentence_ends(text: str, final: bool = True) -> list[int]:
    """Offsets just past each sentence end in ``text`` (the terminator and its closing
    quotes/brackets, or the newline run, included), by the rule in the module docstring.

    ``final=False`` treats ``text`` as the start of a longer, still generated text: an end
    that depends on what follows (a period at the very end, an abbreviation before a word
    not yet complete) is left out. A sentence must hold a letter or digit, so "... Paris"
    or a blank line ends nothing. The last sentence need not be closed and has no entry.
    """
    ends, start = [], 0
    for m in _CANDIDATE.finditer(text):
        decided = _ends_here(text, m, final)
        if decided is None:
            break
        if decided and any(ch.isalnum() for ch in text[start : m.start()]):
            ends.append(m.end())
            start = m.end()
    return ends


def split_sentences(text: str) -> list[str]:
    """The sentences of a finished ``text`` (see :func:`sentence_ends`), stripped."""
    bounds = [0, *sentence_ends(text), len(text)]
    return [s for s in (text[a:b].strip() for a, b in zip(bounds, bounds[1:])) if s]


def sentence_complete(text: str, next_piece: str) -> bool:
    """Whether ``text`` ends with a finished sentence, given the text of the next token
    (greedy decoding knows it); an empty ``next_piece`` means nothing follows."""
    ends = sentence_ends(text + next_piece, final=not next_piece)
    return any(len(text.rstrip()) <= e <= len(text) for e in ends)


def answer_span(text: str, final: bool = True) -> tuple[int, int | None] | None:
    """(start, end) of the answer after the first "the answer is" that introduces one (see
    the module docstring); ``end`` is None while its sentence is unfinished (``final=False``,
    where a phrase at the very end does not count yet: "is" may become "isn't")."""
    for m in ANSWER_MARKER.finditer(text):
        start = _MARKER_TAIL.match(text, m.end()).end()
        if not final and m.end() == len(text):
            return None
        if _NO_ANSWER.match(text, start):
            continue
        ends = sentence_ends(text[start:], final)
        return start, start + ends[0] if ends else (len(text) if final else None)
    return None


def has_answer_marker(text: str) -> bool:
    """Whether a finished reply has a "the answer is" that introduces an answer (the one
    ``extract_answer`` takes its answer after); False: the answer is its first sentence."""
    return answer_span(text) is not None


def _clean(answer: str) -> str:
    """Drop quotes, a leading ellipsis and the sentence's own terminator (an abbreviation
    keeps its period: "Washington, D.C.", "Sammy Davis Jr.")."""
    s = _LEADING_ELLIPSIS.sub("", answer.strip().strip(_QUOTES).strip())
    end = _TERMINATOR.search(s)
    if end and not (end.group() == "." and _period_kind(_last_word(s[: end.start()])) in ("never", "maybe")):
        s = s[: end.start()]
    return s.strip().strip(_QUOTES).strip()


def extract_answer(text: str) -> str:
    """The short answer in a model's reply (rule and sources in the module docstring)."""
    span = answer_span(text)
    if span is None:
        text = text.strip()
        ends = sentence_ends(text)
        span = (0, ends[0] if ends else len(text))
    return _clean(text[span[0] : span[1]])
