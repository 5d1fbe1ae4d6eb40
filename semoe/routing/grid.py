"""The routing evaluation grid of a config's ``routing:`` section: models × policies (plus each
model's own routing as the baseline), the texts they are scored on, and one grid cell end to end.

Pure logic for the ``evaluate_routing`` flow (``semoe.flows.routing``): no Prefect and no store
writes. A cell is identified by (model name, policy key, mode), where the policy key hashes the
*configured* params, so a rerun knows which cells are done before loading anything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semoe import identity
from semoe.config import (
    ConfigError,
    CorpusConfig,
    DatasetConfig,
    PolicySpec,
    RoutingEvalConfig,
    RoutingModelConfig,
    SyntheticConfig,
)
from semoe.data import DataContext
from semoe.data.loading import corpus_key, iter_passages, load_examples
from semoe.generation.base import MethodContext, build_method
from semoe.generation.lm import ChatLM, Generation, ScoredGeneration
from semoe.generation.templates import template_for
from semoe.metrics import exact_match, f1_score
from semoe.models.loading import load_model, pick_device
from semoe.moe_lm.training import checkpoint_key, load_or_train
from semoe.progress import RateMeter
from semoe.retrieval.provided import ProvidedContexts
from semoe.routing.base import make_policy
from semoe.routing.decoding import encode_texts, is_roe
from semoe.routing.heatmaps import cell_title
from semoe.routing.measure import evaluate_policy
from semoe.routing.sites import find_routers
from semoe.storage.artifacts import ArtifactCache
from semoe.storage.rows import rekeyed

if TYPE_CHECKING:
    from semoe.config import SemoeConfig

logger = logging.getLogger(__name__)

# The model's own routing, recorded through top-k in analyze mode (outputs untouched).
BASELINE = PolicySpec(name="topk", label="baseline")
QA_COLUMNS = ("qa_method", "qa_retrieval_rate", "qa_tokens_per_s")  # set beside routing_run_row's context
SPEED_QUALITY_COLUMNS = (
    "model",
    "policy_label",
    "setting",
    "mode",
    "k",
    "perplexity",
    "qa_em",
    "qa_f1",
    "qa_retrieval_rate",
    "experts_per_token",
    "experts_std",
    "floor_rate",
    "ceiling_rate",
    "tokens_per_s",
    "decode_tokens_per_s",
    "qa_tokens_per_s",
    "peak_memory_mib",
)


def routing_section(cfg: "SemoeConfig") -> RoutingEvalConfig:
    if cfg.routing is None:
        raise ConfigError("the config has no `routing:` section (see configs/routing-demo.yaml)")
    return cfg.routing


def _routing_inputs(cfg: "SemoeConfig") -> tuple[str, list]:
    """(corpus key, QA examples): the data a routing evaluation reads."""

    return corpus_key(cfg.corpus, DataContext(synthetic=cfg.synthetic)), qa_examples(cfg)


def routing_run_id(cfg: "SemoeConfig") -> str:
    """The routing run of these inputs (``semoe.identity.routing_run_id``): routing settings,
    the corpus content its texts come from, its QA questions and the routing code; nothing of
    the QA methods, so a config that also runs them keeps two separate rows in ``runs``."""

    return identity.routing_run_id(cfg, *_routing_inputs(cfg))


def cell_keys(cfg: "SemoeConfig", cells: list["Cell"]) -> list[str]:
    """``semoe.identity.routing_cell_key`` of each cell."""

    r = routing_section(cfg)
    inputs = _routing_inputs(cfg)
    return [
        identity.routing_cell_key(
            cfg, r.models[c.model].model_dump(mode="json"), c.spec(r).model_dump(mode="json"), c.mode, *inputs
        )
        for c in cells
    ]


def copied_cell(run_id: str, routing: RoutingEvalConfig, cell: "Cell", tables: dict[str, list[dict]]) -> dict:
    """The stored rows of a cell with the same cell key (``ResultStore.stored_routing_cells``),
    re-keyed to ``run_id``; ``computed_in`` keeps naming the run that measured them."""
    model, policy_key, mode = cell.ident(routing)
    return {
        table: rekeyed(table, rows, run_id=run_id, model=model, policy_key=policy_key, mode=mode)
        for table, rows in tables.items()
    }


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Cell:
    model: int  # index into routing.models
    policy: int | None  # index into routing.policies; None = the baseline
    mode: str

    def spec(self, routing: RoutingEvalConfig) -> PolicySpec:
        return BASELINE if self.policy is None else routing.policies[self.policy]

    def ident(self, routing: RoutingEvalConfig) -> tuple[str, str, str]:
        """(model, policy_key, mode): the primary key of the cell's ``routing_runs`` row, less run_id."""
        return routing.models[self.model].display_name, self.spec(routing).key, self.mode


def grid_cells(routing: RoutingEvalConfig) -> list[Cell]:
    """Every cell, model by model (a model is loaded once for all its cells), baseline first."""
    cells: dict[tuple, Cell] = {}  # by ident: a listed `topk` in analyze mode is the baseline itself
    for m in range(len(routing.models)):
        candidates = [Cell(m, None, "analyze")] if routing.baseline else []
        for cell in candidates + [Cell(m, p, routing.mode) for p in range(len(routing.policies))]:
            cells.setdefault(cell.ident(routing), cell)
    return list(cells.values())


def plan_cells(routing: RoutingEvalConfig, done: set[tuple[str, str, str]]) -> list[Cell]:
    """The cells whose rows are not stored yet."""
    return [c for c in grid_cells(routing) if c.ident(routing) not in done]


# ---------------------------------------------------------------- texts


@dataclass(frozen=True)
class RoutingTexts:
    train: list[str]  # what the small MoE LM trains on: the corpus less the held-out texts
    eval: list[str]  # held out, spread over the corpus (its passages are often grouped by kind)
    calibration: list[str]  # the first training texts, for BH's empirical nulls


def split_texts(texts: list[str], eval_n: int, calibration_n: int) -> RoutingTexts:
    if len(texts) <= eval_n:
        raise ValueError(
            f"the corpus has {len(texts)} passages; holding out routing.eval_texts={eval_n} "
            f"would leave nothing to train on"
        )
    stride = len(texts) // eval_n
    held = set(range(0, stride * eval_n, stride))
    train = [t for i, t in enumerate(texts) if i not in held]
    return RoutingTexts(train, [texts[i] for i in sorted(held)], train[:calibration_n])


@functools.lru_cache(maxsize=2)
def _texts(corpus_json: str, synthetic_json: str, eval_n: int, calibration_n: int) -> RoutingTexts:
    ctx = DataContext(synthetic=SyntheticConfig.model_validate_json(synthetic_json))
    texts = [p.text for p in iter_passages(CorpusConfig.model_validate_json(corpus_json), ctx) if p.text.strip()]
    return split_texts(texts, eval_n, calibration_n)


def routing_texts(cfg: "SemoeConfig") -> RoutingTexts:
    """The config corpus's passages, split (memoised per process: every cell of a run asks)."""
    r = routing_section(cfg)
    return _texts(cfg.corpus.model_dump_json(), cfg.synthetic.model_dump_json(), r.eval_texts, r.calibration_texts)


# ---------------------------------------------------------------- models


@dataclass
class LoadedModel:
    name: str
    key: str  # checkpoint key (small MoE LM) or the spec (HF)
    model: Any
    tokenizer: Any
    curve: list[dict]  # training curve rows (small MoE LM), else empty
    chat: bool  # the model can answer questions through semoe.generation.lm.ChatLM


def load_routing_model(
    mcfg: RoutingModelConfig, routing: RoutingEvalConfig, cache_root: str, train_texts: list[str]
) -> LoadedModel:
    """An HF MoE model (memoised by ``semoe.models.loading``), or the small MoE LM trained on
    ``train_texts`` (cached in the artifact cache: trained only once per config and corpus)."""

    if mcfg.moe_lm is None:
        model, tokenizer = load_model(mcfg.spec, cache_root, routing.dtype, routing.device)
        return LoadedModel(mcfg.display_name, mcfg.spec, model, tokenizer, [], True)

    steps = mcfg.moe_lm.steps
    meter = RateMeter(f"{mcfg.display_name} training", steps, "steps", logger.info)

    def progress(row: dict) -> None:
        meter.update(row["step"], f"step {row['step']}/{steps}, loss {row['loss']:.3f}")

    model, tokenizer, curve = load_or_train(mcfg.moe_lm, train_texts, ArtifactCache(cache_root), on_step=progress)
    model.to(pick_device(routing.device))
    return LoadedModel(mcfg.display_name, checkpoint_key(mcfg.moe_lm, train_texts), model, tokenizer, curve, False)


_LOADED: dict[str, LoadedModel] = {}


def routing_model(cfg: "SemoeConfig", index: int) -> LoadedModel:
    """Model ``index`` of the routing section, loaded once per process (the last one is kept)."""
    r = routing_section(cfg)
    texts = routing_texts(cfg)
    memo = json.dumps(
        [
            r.models[index].model_dump(mode="json"),
            r.dtype,
            r.device,
            cfg.cache.root,
            len(texts.train),
            hashlib.sha256("\0".join(texts.train).encode()).hexdigest(),
        ]
    )
    if memo not in _LOADED:
        _LOADED.clear()
        _LOADED[memo] = load_routing_model(r.models[index], r, cfg.cache.root, texts.train)
    return _LOADED[memo]


def fixed_k(model, spec: PolicySpec) -> int | None:
    """Experts per token when the policy fixes it (``RoutingPolicy.fixed_k``; the model's
    own top-k as the default); None for adaptive policies."""

    return make_policy(spec).fixed_k(find_routers(model)[0].top_k)


def cell_words(routing: RoutingEvalConfig, cell: "Cell") -> tuple[str, str, str, str]:
    """(model, policy label, the policy's setting in words, mode) of a cell."""
    spec = cell.spec(routing)
    return routing.models[cell.model].display_name, spec.display_name, make_policy(spec).setting(), cell.mode


def cell_label(routing: RoutingEvalConfig, cell: "Cell") -> str:
    """``model-policy-setting-mode`` of a cell (its task run's name)."""
    return "-".join(w for w in cell_words(routing, cell) if w).replace(" ", "-")


# ---------------------------------------------------------------- QA


def qa_not_applicable(loaded: LoadedModel) -> str | None:
    """Why QA is not measured for this model (None: it is)."""
    if not loaded.chat:
        return (
            "byte-level base LM trained on corpus passages (no chat template, no instruction or QA "
            "tuning): EM/F1 would score prompt-following, not routing"
        )
    return None


class RoEChatLM(ChatLM):
    """A :class:`ChatLM` whose replies are RoE ensemble decodes (``semoe.routing.ensemble.roe_decode``),
    so RoE answers the same prompts, with the same answer extraction, as every method."""

    def __init__(self, model, tokenizer, policy, system_prompt: str | None = None):
        super().__init__(model, tokenizer, system_prompt)
        self.policy = policy

    def _decode(self, prompt: str, max_new_tokens: int, stop_when=None) -> tuple[list[int], list[int], float]:
        """(prompt ids, new tokens up to EOS or ``stop_when``, seconds) of one RoE decode: RoE
        decodes one sequence at a time (its K copies are the batch)."""
        from semoe.routing.ensemble import roe_decode

        eos = self.tokenizer.eos_token_id
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.device)
        start = time.perf_counter()
        out = roe_decode(self.model, ids, self.policy, max_new_tokens, eos_token_id=eos, guard=False)
        new = out.sequences[0, ids.shape[1] :].tolist()
        n_new = next((j + 1 for j, t in enumerate(new) if t == eos), len(new))
        if stop_when is not None:
            decode = self.tokenizer.decode
            n_new = next((j for j in range(1, n_new) if stop_when(decode(new[:j], skip_special_tokens=True))), n_new)
        return ids[0].tolist(), new[:n_new], time.perf_counter() - start

    def generate(
        self, conversations, max_new_tokens, batch_size=8, on_batch=None, *, stop_when=None
    ) -> list[Generation]:
        """One conversation at a time; a reply is cut after the first token where ``stop_when``
        accepts it, as ``ChatLM`` stops."""
        results = []
        for i, conversation in enumerate(conversations):
            if on_batch is not None:
                on_batch([i])
            ids, new, seconds = self._decode(self.render(conversation), max_new_tokens, stop_when)
            text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
            results.append(Generation(text, len(ids), len(new), seconds))
        return results

    def generate_scored(self, prompts, max_new_tokens, watch, batch_size=8) -> list[ScoredGeneration]:
        """RoE replies with their log-probabilities: the K-sample averaged distributions
        (``ensemble_next_token_probs``, clean-cache semantics as in decoding) recomputed by
        teacher forcing over prompt + reply, since ``roe_decode`` keeps only the tokens."""
        import torch

        from semoe.routing.ensemble import ensemble_next_token_probs
        from semoe.routing.patch import route_with

        results = []
        for prompt in prompts:
            ids, new, seconds = self._decode(prompt, max_new_tokens)
            sequence = torch.tensor([ids + new[:-1]], device=self.device)
            with route_with(self.model, self.policy, guard=False) as session:
                probs = ensemble_next_token_probs(self.model, session.policy, sequence)
            logp = torch.log(probs[len(ids) - 1 :].float().clamp_min(1e-30)).cpu()
            results.append(
                ScoredGeneration(
                    tokens=new,
                    text=self.tokenizer.decode(new, skip_special_tokens=True),
                    token_logprobs=logp.gather(1, torch.tensor(new).unsqueeze(1)).squeeze(1).tolist(),
                    watched=logp[:, list(watch)].tolist(),
                    prompt_tokens=len(ids),
                    seconds=seconds,
                )
            )
        return results


def qa_method(cfg: "SemoeConfig", examples, dataset: str):
    """(the configured QA method, its retriever): a retrieving method gets the questions' own
    contexts (``ProvidedContexts``; no index). ConfigError for bad params or a method that
    needs passage experts; DataFormatError for a question without contexts."""

    spec = routing_section(cfg).qa.method
    method = build_method(spec, cfg)
    if method.uses_experts:
        raise ConfigError(
            f"routing.qa.method {spec.display_name!r} needs passage experts, which routing runs do not build"
        )
    return method, ProvidedContexts(examples, dataset) if method.uses_retrieval else None


def qa_scores(cfg: "SemoeConfig", loaded: LoadedModel, policy, mode: str, examples) -> dict:
    """EM/F1, retrieval rate and generation speed (new tokens per second of generation) of
    the configured QA method (``routing.qa.method``; default ``no-retrieval``: the same
    prompts, with the QA dataset's template, generation and answer extraction as ``semoe run``)
    while ``policy`` routes the model; RoE (patch mode) decodes with its K-sample ensemble
    instead of HF ``generate``."""

    from semoe.routing.patch import route_with

    r = routing_section(cfg)
    if not examples:
        raise ValueError(f"routing.qa: dataset {r.qa.dataset!r} has no questions")
    method, retriever = qa_method(cfg, examples, r.qa.dataset)
    system = cfg.generation.system_prompt
    if is_roe(policy) and mode == "patch":
        lm, routing = RoEChatLM(loaded.model, loaded.tokenizer, policy, system), nullcontext()
    else:  # the cell's perplexity pass already ran the no-op guard
        lm = ChatLM(loaded.model, loaded.tokenizer, system)
        routing = route_with(loaded.model, policy, mode=mode, guard=False)
    template = template_for(cfg.dataset(r.qa.dataset))
    ctx = MethodContext(
        generation=cfg.generation, lm=lm, retrieval=cfg.retrieval, retriever=retriever, template=template
    )
    with routing:
        outputs = method.run(examples, ctx)
    n = len(examples)
    seconds = sum(o.latency.get("generate", 0.0) for o in outputs)
    return {
        "qa_n": n,
        "qa_em": sum(exact_match(o.prediction, ex.answers) for o, ex in zip(outputs, examples) if not o.error) / n,
        "qa_f1": sum(f1_score(o.prediction, ex.answers) for o, ex in zip(outputs, examples) if not o.error) / n,
        "qa_method": r.qa.method.display_name,
        "qa_retrieval_rate": sum(bool(o.retrievals) for o in outputs) / n,
        "qa_tokens_per_s": sum(o.generated_tokens for o in outputs) / seconds if seconds else None,
    }


@functools.lru_cache(maxsize=2)
def _qa_examples(dataset_json: str, synthetic_json: str, limit: int | None) -> list:
    ctx = DataContext(synthetic=SyntheticConfig.model_validate_json(synthetic_json))
    return load_examples(DatasetConfig.model_validate_json(dataset_json), ctx)[:limit]


def qa_examples(cfg: "SemoeConfig") -> list:
    qa = routing_section(cfg).qa
    if qa is None:
        return []
    dataset = next(d for d in cfg.datasets if d.display_name == qa.dataset)
    return _qa_examples(dataset.model_dump_json(), cfg.synthetic.model_dump_json(), qa.limit)


# ---------------------------------------------------------------- one cell


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.") or "x"


def heatmap_names(routing: RoutingEvalConfig) -> dict[tuple[str, str, str], str]:
    """The heatmap file name of every grid cell, by ``Cell.ident``:
    ``<model>__<policy label>-<setting>__<mode>.png`` (e.g. ``olmoe-tiny__bh-alpha-0.05-softmax__patch.png``),
    sanitised to letters, digits, ``.`` and ``-``. Cells whose words coincide (params that
    the setting does not name) get ``-2``, ``-3`` in grid order, so a name is unique in a
    run and stable across reruns of the grid, and never carries the cell's hash."""
    names: dict[tuple[str, str, str], str] = {}
    taken: set[str] = set()
    for cell in grid_cells(routing):
        model, label, setting, mode = cell_words(routing, cell)
        stem = f"{_slug(model)}__{_slug(f'{label} {setting}')}__{_slug(mode)}"
        name, n = stem, 1
        while name.lower() in taken:  # case-insensitive file systems
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.lower())
        names[cell.ident(routing)] = f"{name}.png"
    return names


def heatmap_path(heatmap_dir: str | Path, cell: Cell, routing: RoutingEvalConfig) -> Path:
    return Path(heatmap_dir) / heatmap_names(routing)[cell.ident(routing)]


def evaluate_cell(cfg: "SemoeConfig", run_id: str, cell: Cell, heatmap_dir: str | Path | None) -> dict[str, list[dict]]:
    """Perplexity, routing statistics, decode speed, peak memory, QA and the heatmap of one
    cell: ``{"routing_runs": [row], "routing_layer_stats": rows}``."""

    r = routing_section(cfg)
    loaded = routing_model(cfg, cell.model)
    texts = routing_texts(cfg)
    spec = cell.spec(r)
    batches = encode_texts(loaded.tokenizer, texts.eval, r.max_tokens)
    if not batches:
        raise ValueError("no held-out text has 2 or more tokens; check the corpus section")
    policy = make_policy(spec)
    calibration = (
        encode_texts(loaded.tokenizer, texts.calibration, r.max_tokens) if policy.needs_calibration() else None
    )
    prompt = batches[0][:, : r.decode.prompt_tokens] if r.decode.enabled else None
    heat = heatmap_path(heatmap_dir, cell, r) if r.heatmaps and heatmap_dir is not None else None
    if heat is not None:
        heat.parent.mkdir(parents=True, exist_ok=True)
    ev = evaluate_policy(
        loaded.model,
        {"name": spec.name, "params": spec.params},
        batches,
        mode=cell.mode,
        calibration=calibration,
        decode_prompt=prompt,
        max_new_tokens=r.decode.max_new_tokens,
        guard=r.guard,
        heatmap_path=heat,
        heatmap_title=cell_title(*cell_words(r, cell)),
    )
    context: dict = {
        "model_key": loaded.key,
        "policy_label": spec.display_name,
        "setting": policy.setting(),
        "k": fixed_k(loaded.model, spec),
    }
    qa: dict = {}  # columns after routing_run_row's context (migration 9)
    if r.qa is not None:
        context["qa_dataset"] = r.qa.dataset
        note = qa_not_applicable(loaded)
        if note is None:
            scores = qa_scores(cfg, loaded, ev.policy, cell.mode, qa_examples(cfg))
            qa = {c: scores.pop(c) for c in QA_COLUMNS}
            context.update(scores)
        else:
            context["qa_note"] = note
    _, key, _ = cell.ident(r)
    return {
        "routing_runs": [ev.run_row(run_id, loaded.name, key=key, **context) | qa],
        "routing_layer_stats": ev.layer_rows(run_id, loaded.name, key=key),
    }


# ---------------------------------------------------------------- report


def _cell_text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if v == v else "nan"
    return str(v)


def speed_quality_markdown(run_id: str, rows: list[dict]) -> str:
    """The speed/quality table (``routing_by_k`` rows) as markdown, one block per model."""
    lines = [f"# routing run `{run_id}`", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += [
            f"## {model}",
            "",
            "| " + " | ".join(SPEED_QUALITY_COLUMNS[1:]) + " |",
            "|" + "---|" * (len(SPEED_QUALITY_COLUMNS) - 1),
        ]
        lines += [
            "| " + " | ".join(_cell_text(r[c]) for c in SPEED_QUALITY_COLUMNS[1:]) + " |"
            for r in rows
            if r["model"] == model
        ]
        lines.append("")
    return "\n".join(lines)
