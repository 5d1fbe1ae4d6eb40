"""PRAG-style data augmentation: for each passage the LM writes rewrites (same facts and
entities, new wording) and a JSON list of QA pairs; a passage expert is later trained on
the passage, its rewrites and its QA pairs.

Small models write broken JSON, loop, copy the worked example and make answers up, so
every output is parsed as strict JSON where it is valid and repaired where it is not
(:func:`parse_qa_pairs`), and then checked against the passage; what fails is
regenerated, greedily first and then with seeded sampling, at most ``max_attempts`` times.
A passage that still fails is recorded as ``"failed"`` with the reason: nothing is ever
filled in. Results, failures included, are cached per passage text in the artifact cache,
so reruns only generate what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Literal, Sequence

from semoe.config import AugmentConfig
from semoe.data.schema import Passage
from semoe.generation.answer import sentence_ends, split_sentences
from semoe.generation.lm import ChatLM, Message
from semoe.metrics import normalize_answer
from semoe.progress import RateMeter
from semoe.storage.artifacts import MARKER, ArtifactCache, content_key
from semoe.storage.results import utcnow
from semoe.storage.rows import AugmentationRow

log = logging.getLogger(__name__)

# Bump when a prompt, the prefill, the parser or an acceptance check changes, so cached
# augmentations made under the old wording are not reused (prag-3: valid JSON is parsed
# strictly; the old repair rewrote quotes inside strings and split surrogate pairs).
PROMPT_VERSION = "prag-3"
CACHE_KIND = "augmentations"
CACHE_FILE = "augmentation.json"

# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    full_answer: str


@dataclass
class Augmentation:
    passage_id: str
    passage_text_hash: str
    model: str
    prompt_version: str
    status: Literal["ok", "failed"]
    rewrites: list[str] = field(default_factory=list)
    qa: list[QAPair] = field(default_factory=list)
    attempts: int = 0
    reason: str | None = None
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Augmentation":
        d = json.loads(text)
        d["qa"] = [QAPair(**q) for q in d["qa"]]
        return cls(**d)

    def to_row(self) -> dict:
        """A row of the ``augmentations`` table (``semoe.storage.rows.AugmentationRow``)."""
        return AugmentationRow(
            passage_hash=self.passage_text_hash,
            passage_id=self.passage_id,
            model=self.model,
            prompt_version=self.prompt_version,
            status=self.status,
            rewrites=list(self.rewrites),
            qa=json.dumps([asdict(q) for q in self.qa], ensure_ascii=False),
            qa_count=len(self.qa),
            attempts=self.attempts,
            reason=self.reason,
            seconds=self.seconds,
            created_at=utcnow(),
        ).as_dict()


def passage_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def augmentation_key(text_hash: str, model_spec: str, n_qa: int, n_rewrites: int, min_rewrites: int = 0) -> str:
    """Cache key of one passage's augmentation; reads PROMPT_VERSION at call time."""
    return content_key(
        text_hash, model_spec, PROMPT_VERSION, n_qa, n_rewrites, *([min_rewrites] if min_rewrites else [])
    )


# --------------------------------------------------------------------------- prompts

_REWRITE_PROMPT = (
    "Rewrite the passage below. Keep the entities, proper nouns and key details (names, places, "
    "dates, terminology) exactly as they are, but express the same ideas in different words and "
    "sentences. Do not add or leave out facts. Reply with the rewritten passage only.\n\n"
    "Passage:\n{passage}"
)
_QA_PROMPT = (
    "Here is a passage. Write {count} that can be answered with the information in the passage. "
    "For each question give a short answer taken from the passage and a full answer in one complete "
    "sentence. Reply only with a JSON list in this format:\n"
    '[{{"question": "...", "answer": "...", "full_answer": "..."}}]\n\n'
    "Passage:\n{passage}"
)
# One worked example, given as an earlier turn of the chat: a 135M model follows a shown
# reply far better than a described one. Its entities are invented and absent from any corpus.
_EXAMPLE_PASSAGE = (
    "Osric Pellane was a glassblower born in Tarrowmere in 1902. For many years Pellane worked for "
    "the Hesk Glass Company, and his blue vases are still collected today."
)
_EXAMPLE_QA = (
    QAPair("Where was Osric Pellane born?", "Tarrowmere", "Osric Pellane was born in Tarrowmere."),
    QAPair("When was Osric Pellane born?", "1902", "Osric Pellane was born in 1902."),
    QAPair(
        "Which company did Osric Pellane work for?",
        "the Hesk Glass Company",
        "Osric Pellane worked for the Hesk Glass Company.",
    ),
)
# The reply is started for the model, which keeps it from opening with prose.
QA_PREFIX = '[{"question": "'
_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def rewrite_messages(passage_text: str) -> list[Message]:
    return [{"role": "user", "content": _REWRITE_PROMPT.format(passage=passage_text)}]


def qa_messages(passage_text: str, n_qa: int) -> list[Message]:
    """The QA request with the worked example as a previous turn (the reply is prefilled with QA_PREFIX)."""
    count = "one question" if n_qa == 1 else f"{_NUMBERS[n_qa - 1]} different questions"
    example = json.dumps([asdict(q) for q in _EXAMPLE_QA[:n_qa]], ensure_ascii=False)
    return [
        {"role": "user", "content": _QA_PROMPT.format(count=count, passage=_EXAMPLE_PASSAGE)},
        {"role": "assistant", "content": example},
        {"role": "user", "content": _QA_PROMPT.format(count=count, passage=passage_text)},
    ]


# --------------------------------------------------------------------------- lenient JSON


class QAParseError(ValueError):
    """No usable QA pair in a model output; the message is the reason."""


class _Truncated(Exception):
    """The text ended inside a value; ``args[0]``, if any, is the enclosing object's complete fields."""


class _Invalid(Exception):
    pass


# Quote characters small models use as string delimiters. The repair pass treats them as
# delimiters only where a string starts or ends, so typographic quotes *inside* a string are
# kept as written (rewriting them before parsing broke valid JSON such as "“the Loom Queen”").
_DOUBLE_QUOTES = '"“”„‟'
_SINGLE_QUOTES = "'‘’‚‛"
_OPENERS = _DOUBLE_QUOTES + _SINGLE_QUOTES
_FENCE = re.compile(r"```[A-Za-z]*")
_OPEN_BRACKET = re.compile(r"[\[{]")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
_BARE_END = ",:{}[]\n"
# Far deeper than any QA list (depth 2); deeper input is garbage, and recursing into it
# would end in RecursionError instead of a reason.
MAX_DEPTH = 32


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i].isspace():
        i += 1
    return i


def _closes(s: str, i: int) -> bool:
    """Whether a quote before ``s[i]`` ends a string (else it is an apostrophe or a quote inside it)."""
    i = _skip_ws(s, i)
    return i >= len(s) or s[i] in ",:}]"


def _string(s: str, i: int) -> tuple[str, int]:
    """A string opened by any quote of ``_OPENERS``. One opened by ``"`` ends at the next
    unescaped ``"``, as in JSON; any other ends at a quote of its family followed by
    ``, : } ]`` or the end, so apostrophes and quoted words inside it survive."""
    quote, i, buf = s[i], i + 1, []
    family = _DOUBLE_QUOTES if quote in _DOUBLE_QUOTES else _SINGLE_QUOTES
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", s[i + 2 : i + 6]):
                buf.append(chr(int(s[i + 2 : i + 6], 16)))  # surrogate halves are paired in _field
                i += 6
                continue
            buf.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        if c == quote == '"' or (c in family and quote != '"' and _closes(s, i + 1)):
            return "".join(buf), i + 1
        buf.append(c)
        i += 1
    raise _Truncated


def _bare(s: str, i: int) -> tuple[object, int]:
    j = i
    while j < len(s) and s[j] not in _BARE_END:
        j += 1
    if j >= len(s):
        raise _Truncated
    token = s[i:j].strip()
    if not token:
        raise _Invalid
    literals = {"true": True, "false": False, "null": None}
    if token in literals:
        return literals[token], j
    try:
        return json.loads(token), j
    except ValueError:
        return token, j


def _object(s: str, i: int, depth: int) -> tuple[dict, int]:
    obj: dict = {}
    i += 1
    try:
        while True:
            i = _skip_ws(s, i)
            if i >= len(s):
                raise _Truncated
            if s[i] == "}":
                return obj, i + 1
            if s[i] == ",":
                i += 1
                continue
            key, i = _string(s, i) if s[i] in _OPENERS else _bare(s, i)
            i = _skip_ws(s, i)
            if i >= len(s):
                raise _Truncated
            if s[i] != ":" or not isinstance(key, str):
                raise _Invalid
            value, i = _value(s, i + 1, depth)
            obj.setdefault(key, value)  # a looping model repeats keys: its first value is the sane one
    except _Truncated:
        # A model that loops on a key never closes the object; the fields it finished still count.
        raise _Truncated(obj) from None


def _array(s: str, i: int, depth: int) -> tuple[list, int]:
    """Items up to the closing bracket; a cut-off list keeps its complete items."""
    items: list = []
    i += 1
    while True:
        i = _skip_ws(s, i)
        if i >= len(s):
            return items, i
        if s[i] == "]":
            return items, i + 1
        if s[i] == ",":
            i += 1
            continue
        try:
            value, i = _value(s, i, depth)
        except _Truncated as cut:
            return items + [a for a in cut.args if a], len(s)
        items.append(value)


def _value(s: str, i: int, depth: int = 0) -> tuple[object, int]:
    i = _skip_ws(s, i)
    if i >= len(s):
        raise _Truncated
    c = s[i]
    if c in "{[":
        if depth >= MAX_DEPTH:
            raise QAParseError(f"JSON nested deeper than {MAX_DEPTH} levels (at character {i})")
        return _object(s, i, depth + 1) if c == "{" else _array(s, i, depth + 1)
    if c in _OPENERS:
        return _string(s, i)
    return _bare(s, i)


def _first_wins(pairs: list[tuple[str, object]]) -> dict:
    """A repeated key keeps its first value, as in the lenient parser (strict ``json`` keeps the last)."""
    obj: dict = {}
    for key, value in pairs:
        obj.setdefault(key, value)
    return obj


def _json_items(text: str) -> tuple[list, bool]:
    """Every top-level item of the JSON lists and objects found in ``text`` (prose around
    them skipped), and whether anything JSON-like was found at all.

    At each bracket the text is first parsed as strict JSON (``json.JSONDecoder.raw_decode``);
    only where that fails is it repaired by the lenient parser. Where a list is malformed
    even for that, scanning resumes just past its opening bracket, so its well-formed
    objects are still picked up one by one.
    """
    # Fences become blanks of the same length, so both parsers index the same text.
    lenient = _FENCE.sub(lambda m: " " * len(m.group()), text)
    strict = json.JSONDecoder(object_pairs_hook=_first_wins)
    items: list = []
    found = False
    i = 0
    while True:
        start = _OPEN_BRACKET.search(lenient, i)
        if start is None:
            return items, found
        j = start.start()
        try:
            value, i = strict.raw_decode(text, j)
        except (ValueError, RecursionError):  # the C scanner recurses without a depth limit
            try:
                value, i = _value(lenient, j)
            except _Truncated as cut:
                return items + [a for a in cut.args if a], True
            except _Invalid:
                i = j + 1
                continue
        found = True
        items.extend(value if isinstance(value, list) else [value])


def _text(value: str) -> str:
    """``value`` with escaped UTF-16 surrogate pairs (``\\ud83d\\ude00``) joined into their
    character and lone halves replaced by U+FFFD: a lone surrogate cannot be encoded as UTF-8,
    so it would fail the cache write and the results store."""
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _field(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return " ".join(_text(value).split()) if isinstance(value, str) else ""


def parse_qa_pairs(text: str) -> list[QAPair]:
    """QA pairs from a model output, repairing what can be repaired.

    Valid JSON is read as it is (typographic quotes inside strings kept, ``\\uXXXX``
    surrogate pairs joined); only what strict parsing rejects is repaired. Accepted: a JSON
    list (or bare objects) with prose or markdown fences around it, single or typographic
    quotes as delimiters, unquoted keys, trailing or doubled commas, missing closing brackets
    (output cut off by the token limit keeps every field it completed), repeated keys (the
    first wins). Items without a complete question and answer are dropped; a missing
    ``full_answer`` becomes the answer.
    Raises :class:`QAParseError` with the reason when no pair remains, or when the JSON is
    nested deeper than ``MAX_DEPTH``.
    """
    items, found = _json_items(text)
    if not found:
        raise QAParseError("no JSON list or object in the output")
    pairs: list[QAPair] = []
    dropped: Counter = Counter()
    for item in items:
        if not isinstance(item, dict):
            dropped["not an object"] += 1
            continue
        fields = {re.sub(r"[\s-]+", "_", str(k).strip().lower()): v for k, v in reversed(item.items())}
        question, answer = _field(fields.get("question")), _field(fields.get("answer"))
        if not question or not answer:
            dropped["no question" if not question else "no answer"] += 1
            continue
        pairs.append(QAPair(question, answer, _field(fields.get("full_answer")) or answer))
    if not pairs:
        detail = ", ".join(f"{n} {why}" for why, n in dropped.items())
        raise QAParseError(f"no item with a question and an answer ({detail})" if detail else "empty JSON list")
    return pairs


# --------------------------------------------------------------------------- checks

_CLOSERS = "\"')]”’"
_LABEL_LINE = re.compile(r"^[^\n]{0,80}:\s*\n")
_PARAGRAPH_END = re.compile(r"[.!?][\"')\]]*[ \t]*\n[ \t]*\n")
# A rewrite shorter than half the passage has lost facts; one keeping under 60 % of the
# passage's names and numbers, or naming any the passage lacks, has changed the facts
# (all three are common with SmolLM2-135M).
_MIN_REWRITE_RATIO = 0.5
_MIN_TERMS_KEPT = 0.6


def _clean_rewrite(text: str) -> str:
    """Strip fences and a "Here is the rewrite:" line; cut a sentence left unfinished by the token limit."""
    text = _LABEL_LINE.sub("", _FENCE.sub("", text).strip(), count=1).strip().strip('"').strip()
    # the package's sentence rule ("St. Louis", "J. R. R. Tolkien" end nothing), punctuated ends only
    ends = [e for e in sentence_ends(text) if text[:e].rstrip().rstrip(_CLOSERS).endswith((".", "!", "?", "…"))]
    text = text[: ends[-1]] if ends else ""
    kept, seen = [], set()
    for a, b in zip([0, *ends], ends):  # each sentence with the whitespace before it
        key = normalize_answer(text[a:b])
        if key and key in seen:  # a repeated sentence adds nothing; its first occurrence stays
            continue
        seen.add(key)
        kept.append(text[a:b])
    return "".join(kept).strip()


def _key_terms(text: str) -> set[str]:
    """Names and numbers: capitalised words not opening a sentence, and digit runs."""
    terms = set(re.findall(r"\b\d+\b", text))
    for sentence in split_sentences(text):
        terms.update(re.findall(r"\b[A-Z][\w-]+", sentence)[1:])
    return terms


def _new_terms(text: str, passage: str) -> list[str]:
    """Names and numbers of ``text`` found nowhere in the passage: invented facts."""
    known = set(re.findall(r"[\w-]+", passage.lower()))
    return sorted(t for t in _key_terms(text) if t.lower() not in known)


def _rewrite_problem(rewrite: str, passage: str, accepted: Sequence[str]) -> str | None:
    if not rewrite:
        return "no complete sentence"
    words, passage_words = len(rewrite.split()), len(passage.split())
    if words < _MIN_REWRITE_RATIO * passage_words:
        return f"too short ({words} words for a {passage_words}-word passage)"
    norm = normalize_answer(rewrite)
    if norm == normalize_answer(passage):
        return "copies the passage"
    if norm in (normalize_answer(a) for a in accepted):
        return "same as another rewrite"
    terms = _key_terms(passage)
    missing = sorted(t for t in terms if not re.search(rf"\b{re.escape(t)}\b", rewrite))
    if terms and len(missing) > (1 - _MIN_TERMS_KEPT) * len(terms):
        return f"drops names or numbers ({', '.join(missing[:4])})"
    added = _new_terms(rewrite, passage)
    if added:
        return f"adds names or numbers ({', '.join(added[:4])})"
    return None


_EXAMPLE_QUESTIONS = frozenset(normalize_answer(q.question) for q in _EXAMPLE_QA)


def _contains(text: str, phrase: str) -> bool:
    """Whether normalised ``phrase`` occurs in normalised ``text`` as whole words."""
    return f" {normalize_answer(phrase)} " in f" {normalize_answer(text)} "


def _usable_pairs(text: str, passage: str, cfg: AugmentConfig) -> tuple[list[QAPair], str | None]:
    """The pairs of a QA output that can be trusted, or the reason there are too few.

    A full answer that leaves out the answer or names things absent from the passage is
    replaced by the answer itself, as a missing one is.
    """
    try:
        pairs = parse_qa_pairs(text)
    except QAParseError as e:
        return [], str(e)
    kept: list[QAPair] = []
    seen: set[str] = set()
    dropped: Counter = Counter()
    for p in pairs:
        q = normalize_answer(p.question)
        if q in _EXAMPLE_QUESTIONS:
            dropped["copied from the example"] += 1
        elif not normalize_answer(p.answer) or _contains(p.question, p.answer):
            dropped["answer empty or given in the question"] += 1
        elif cfg.grounded and not _contains(passage, p.answer):
            dropped["answer not in the passage"] += 1
        elif cfg.grounded and _new_terms(p.question, passage):
            dropped["question names things not in the passage"] += 1
        elif q in seen:
            dropped["repeated question"] += 1
        else:
            seen.add(q)
            full_ok = _contains(p.full_answer, p.answer) and not _new_terms(p.full_answer, passage)
            kept.append(p if full_ok else replace(p, full_answer=p.answer))
    kept = kept[: cfg.n_qa]
    if len(kept) < cfg.min_qa:
        detail = ", ".join(f"{n} {why}" for why, n in dropped.items())
        return kept, f"{len(kept)} usable of {len(pairs)} parsed pairs ({detail})"
    return kept, None


# --------------------------------------------------------------------------- generation


def _looping(text: str, window: int = 48) -> bool:
    """The reply's last ``window`` characters occur earlier in it: greedy decoding of a small
    model has entered a cycle that only the token limit would end."""
    return len(text) >= 2 * window and text[-window:] in text[:-window]


def _qa_reply_complete(n_qa: int):
    """Stop a QA reply once it closes the list or holds twice ``n_qa`` objects (spares for
    the pairs the grounding checks drop), or once it loops or repeats a key inside one
    object (greedy small models loop on ``"full_answer": ...``): the lenient parser keeps
    what came before."""

    def complete(text: str) -> bool:
        reply = QA_PREFIX + text
        objects = reply.count("}")
        if objects >= 2 * n_qa or reply.rstrip().endswith("]") or _looping(text):
            return True
        return max(reply.count(f'"{key}"') for key in ("question", "answer", "full_answer")) > objects + 1

    return complete


def _rewrite_complete(text: str) -> bool:
    """A blank line after a finished sentence ends the rewrite (a label line does not)."""
    return _PARAGRAPH_END.search(text) is not None or _looping(text)


@dataclass
class _Job:
    """One rewrite slot or the QA list of one passage, retried until accepted or out of attempts."""

    passage: int  # index in the chunk
    kind: Literal["rewrite", "qa"]
    slot: int
    prompt: str
    attempts: int = 0
    seconds: float = 0.0
    result: str | list[QAPair] | None = None
    reasons: list[str] = field(default_factory=list)
    crashed: bool = False  # an attempt raised: the failure says nothing about the passage

    def failure(self) -> str:
        return f"{self.kind} failed after {self.attempts} attempts: {' | '.join(dict.fromkeys(self.reasons))}"


def _describe(e: BaseException) -> str:
    """A failure reason that keeps a programming error recognisable: exception type and message."""
    return f"{type(e).__name__}: {e}"


def _judge(
    job: _Job, reply: str, passage: str, jobs: Sequence[_Job], cfg: AugmentConfig
) -> tuple[str | list[QAPair], str | None]:
    """(result, None) for an acceptable reply to ``job``, else (result, the reason it is not)."""
    if job.kind == "qa":
        return _usable_pairs(QA_PREFIX + reply, passage, cfg)
    result = _clean_rewrite(reply)
    accepted = [j.result for j in jobs if j.passage == job.passage and j.kind == "rewrite" and j.result]
    return result, _rewrite_problem(result, passage, accepted)


def _augment_chunk(
    passages: Sequence[Passage], cfg: AugmentConfig, lm: ChatLM, spec: str
) -> list[tuple[Augmentation, bool]]:
    """(record, whether to cache it) per passage; a failure caused by an exception is not
    cached, so a rerun (after a fix) tries the passage again."""
    jobs: list[_Job] = []
    for n, p in enumerate(passages):
        rewrite_prompt = lm.render(rewrite_messages(p.text))
        jobs += [_Job(n, "rewrite", s, rewrite_prompt) for s in range(cfg.n_rewrites)]
        jobs.append(_Job(n, "qa", 0, lm.render(qa_messages(p.text, cfg.n_qa)) + QA_PREFIX))
    max_tokens = {"rewrite": cfg.rewrite_max_new_tokens, "qa": cfg.qa_max_new_tokens}
    stop_when = {"rewrite": _rewrite_complete, "qa": _qa_reply_complete(cfg.n_qa)}
    for attempt in range(cfg.max_attempts):
        for kind in ("rewrite", "qa"):
            for greedy in (True, False):
                group = [
                    j for j in jobs if j.result is None and j.kind == kind and (attempt == 0 and j.slot == 0) == greedy
                ]
                if not group:
                    continue
                seed = int(content_key(cfg.seed, attempt, kind), 16) % 2**31
                temperature = 0.0 if greedy else cfg.retry_temperature
                gens = lm.generate_rendered(
                    [j.prompt for j in group],
                    max_tokens[kind],
                    cfg.batch_size,
                    temperature=temperature,
                    seed=seed,
                    stop_when=stop_when[kind],
                )
                for job, gen in zip(group, gens):
                    job.attempts += 1
                    job.seconds += gen.seconds
                    try:
                        result, problem = _judge(job, gen.text, passages[job.passage].text, jobs, cfg)
                    except Exception as e:  # one passage's bad output must not abort the chunk
                        log.warning("checking a %s of passage %s failed", kind, passages[job.passage].id, exc_info=True)
                        result, problem, job.crashed = None, _describe(e), True
                    if problem is None:
                        job.result = result
                    else:
                        job.reasons.append(problem)
    records = []
    for n, p in enumerate(passages):
        own = [j for j in jobs if j.passage == n]
        failed = [j for j in own if j.result is None]
        rewrites = [j.result for j in own if j.kind == "rewrite" and j.result is not None]
        usable = all(j.result is not None for j in own if j.kind == "qa") and len(rewrites) >= cfg.min_rewrites
        records.append(
            (
                Augmentation(
                    passage_id=p.id,
                    passage_text_hash=passage_hash(p.text),
                    model=spec,
                    prompt_version=PROMPT_VERSION,
                    status="ok" if usable else "failed",
                    rewrites=rewrites,
                    qa=next((j.result for j in own if j.kind == "qa" and j.result is not None), []),
                    attempts=max(j.attempts for j in own),
                    reason="; ".join(j.failure() for j in failed) or None,
                    seconds=round(sum(j.seconds for j in own), 3),
                ),
                not any(j.crashed for j in failed),
            )
        )
    return records


# --------------------------------------------------------------------------- entry point


def _store(cache: ArtifactCache, key: str, record: Augmentation) -> Augmentation:
    """Cache ``record``; returns it, or, when it cannot be cached, a failed record saying why
    (left uncached, so the next run tries again)."""

    def build(out):
        (out / CACHE_FILE).write_bytes(data)
        return {"status": record.status, "passage_id": record.passage_id}

    try:
        data = record.to_json().encode("utf-8")  # fails here, before the cache is touched
        cache.get_or_build(CACHE_KIND, key, build)
    except Exception as e:
        log.warning("could not cache the augmentation of passage %s", record.passage_id, exc_info=True)
        # Its content may be what could not be encoded; it would fail the results store too.
        return replace(record, status="failed", rewrites=[], qa=[], reason=f"not cached: {_describe(e)}")
    return record


def _cached(cache: ArtifactCache, key: str) -> Augmentation | None:
    """The cached augmentation under ``key``, or None when there is none or it is unreadable
    (then it is regenerated)."""
    if not cache.is_complete(CACHE_KIND, key):
        return None
    path = cache.path(CACHE_KIND, key) / CACHE_FILE
    try:
        return Augmentation.from_json(path.read_text(encoding="utf-8"))
    except Exception as e:
        log.warning("unreadable cached augmentation %s (%s); generating it again", path, _describe(e))
        (path.parent / MARKER).unlink(missing_ok=True)
        return None


def augment_passages(
    passages: Iterable[Passage],
    cfg: AugmentConfig,
    lm: ChatLM,
    cache: ArtifactCache,
    *,
    model_spec: str | None = None,
) -> list[Augmentation]:
    """One augmentation per passage, in input order.

    ``model_spec`` names the model ``lm`` was loaded from (``cfg.augmenting_model(generator
    spec)``); it defaults to ``cfg.model``. Cached augmentations are returned without touching
    the model; the missing ones (and cached failures when ``cfg.retry_failed``) are generated
    chunk by chunk and cached as each chunk finishes, so a killed run resumes. Passages with
    the same text share one augmentation.

    An exception while checking or caching one passage's output does not abort the run: it
    becomes that passage's failure, its reason naming the exception type and message, and
    is not cached. Errors of the model itself (``generate``) concern the whole chunk and
    propagate.
    """
    spec = model_spec or cfg.model
    if not spec:
        raise ValueError("augment_passages needs model_spec when cfg.model is None")
    passages = list(passages)
    keys = [augmentation_key(passage_hash(p.text), spec, cfg.n_qa, cfg.n_rewrites, cfg.min_rewrites) for p in passages]
    found: dict[str, Augmentation] = {}
    todo: dict[str, Passage] = {}
    for p, key in zip(passages, keys):
        if key in found or key in todo:
            continue
        record = _cached(cache, key)
        if record is not None:
            if record.status == "ok" or not cfg.retry_failed:
                found[key] = record
                continue
            (cache.path(CACHE_KIND, key) / MARKER).unlink(missing_ok=True)
        todo[key] = p
    pending = list(todo.items())
    meter = RateMeter("augmentation", len(pending), "passages", log.info)
    ok = 0
    for start in range(0, len(pending), cfg.chunk_size):
        chunk = pending[start : start + cfg.chunk_size]
        for (key, _), (record, cacheable) in zip(chunk, _augment_chunk([p for _, p in chunk], cfg, lm, spec)):
            found[key] = _store(cache, key, record) if cacheable else record
        ok += sum(found[key].status == "ok" for key, _ in chunk)
        meter.advance(len(chunk), f"{start + len(chunk)}/{len(pending)} passages ({ok} ok)")
    return [replace(found[key], passage_id=p.id) for p, key in zip(passages, keys)]
