"""PRAG-style data augmentation: for each passage the LM writes rewrites (same facts and
entities, new wording) and a JSON list of QA pairs; a passage expert is later trained on
the passage, its rewrites and its QA pairs.

Small models write broken JSON, loop, copy the worked example and make answers up, so
every output is parsed as strict JSON where it is valid and repaired where it is not
(:func:`semoe.experts.qa_reply.parse_qa_pairs`), and then checked against the passage
(:mod:`semoe.experts.augment_checks`); what fails is
regenerated, greedily first and then with seeded sampling, at most ``max_attempts`` times.
A passage that still fails is recorded as ``"failed"`` with the reason: nothing is ever
filled in. Results, failures included, are cached per passage text in the artifact cache,
so reruns only generate what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Literal, Sequence

from semoe.config import AugmentConfig
from semoe.data.schema import Passage
from semoe.experts.augment_checks import (
    clean_rewrite,
    qa_reply_complete,
    rewrite_complete,
    rewrite_problem,
    usable_pairs,
)
from semoe.experts.augment_prompts import QA_PREFIX, qa_messages, rewrite_messages
from semoe.experts.qa_reply import QAPair
from semoe.generation.lm import ChatLM
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


# --------------------------------------------------------------------------- the job


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
        return usable_pairs(QA_PREFIX + reply, passage, cfg)
    result = clean_rewrite(reply)
    accepted = [j.result for j in jobs if j.passage == job.passage and j.kind == "rewrite" and j.result]
    return result, rewrite_problem(result, passage, accepted)


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
    stop_when = {"rewrite": rewrite_complete, "qa": qa_reply_complete(cfg.n_qa)}
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
