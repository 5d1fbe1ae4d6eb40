"""A DyPRAG-style parameter translator: a passage's LoRA expert in one forward, no training.

DyPRAG (Tan et al. 2025, "Dynamic Parametric Retrieval Augmented Generation for Test-time
Knowledge Enhancement", github.com/Trae1ounG/DyPRAG) learns a hypernetwork that maps a
passage to the LoRA PRAG would train for it. Here, as there:

* **input**: the base model reads the passage alone (its tokenizer's special tokens, no chat
  template) and the hidden state of its last token is the passage's embedding (DyPRAG pools
  the last layer's; ``input_layer: own`` feeds layer l's MLP the output of layer l instead);
* **output**: per decoder layer a two-layer MLP (``hidden`` units, ReLU) writes the flattened
  rank-r ``A`` (r, in) and ``B`` (out, r) of every target module of that layer, in the expert
  format of :mod:`semoe.experts.format` (alpha and rank of the PRAG experts it learned from);
* **loss** (``train_dyprag.py``): ``mse_weight`` · Σ over modules of the mean squared error of
  A and of B against the PRAG expert, ``lm_weight`` · the language-model loss of the
  passage's augmented QA sequences (PRAG's training sequences) with the generated expert
  inserted, ``kl_weight`` · KL(target expert ‖ generated expert) of the next-token
  distributions on those sequences, summed over tokens, averaged over sequences (DyPRAG's
  ``batchmean`` with batch 1). One pair per AdamW step, pairs shuffled each epoch.

Deviations from DyPRAG's code, for a few hundred pairs instead of ~20k: the input is
normalised (LayerNorm without parameters: the residual stream of ``own`` layers is far from
unit scale), one MLP per layer writes all its modules (DyPRAG: one per module, with the layer
index as an extra input), and the output layer's bias starts at the mean of the training
targets (DyPRAG starts near zero and first spends steps learning the initial LoRA that every
PRAG expert shares), its weights near zero as in DyPRAG (N(0, 1e-7)).

Deviation for creation speed (``encoder_layers``: N): the passage may be read by the base
model's first N decoder layers only (a shallow cut of its decoder, sharing the weights), the
state after layer N with the model's final norm applied, so that N = all layers is exactly
DyPRAG's input (``hidden_states[-1]``) and every depth feeds the MLPs a state on the scale the
final norm gives; ``own`` reads layer l's output up to N and the cut's last state beyond.
Creation costs one encoder forward, about N/depth of the whole model's (the translator's MLPs
and the LM head, which is never run, are not the cost). The default N = 4 was chosen by
``benchmarks/bench_translator.py --parts layers`` (SmolLM2-135M, 30 layers, 8 training pairs,
10 held-out passages of ~150 tokens, 1 thread): held-out QA log-likelihood gain (answer tokens'
loss without minus with the translated expert) 0.300 nats/token with all layers, 0.304 with
12, 0.289 with 8, 0.310 with 4 (10/10 passages improved each), against creation CPU per passage
(one batch) 0.39 s, 0.16 s, 0.10 s, 0.05 s: the smallest depth measured whose gain is not
clearly below all layers'. One seed and templated QA about named facts: the differences
(±0.01) are within what a reseed moves, so read them as "no loss", not as a ranking.

Checkpoint: one safetensors file of the translator's tensors, its layout and settings in the
metadata; :func:`load_translator` raises :class:`TranslatorError` naming the file for anything
it cannot use. :func:`ensure_translator` keys it by the content of its training pairs (their
expert keys, which cover passage, augmentation and PRAG settings) and its own settings.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from semoe.config import ExpertConfig, TranslatorConfig
from semoe.experts.format import ExpertFileError, LoraExpert, read_safetensors
from semoe.experts.lora_init import target_modules
from semoe.experts.training_data import IGNORE, TrainingItem, build_sequences
from semoe.storage.artifacts import ArtifactCache, content_key
from semoe.storage.atomic import atomic_path
from semoe.storage.rows import TranslatorTrainingRow

if TYPE_CHECKING:
    import torch
    from torch import nn

TRANSLATOR_KIND = "translators"
RECIPE_KIND = "translator-recipes"  # settings + corpus -> the checkpoint built for them
CHECKPOINT_FILE = "translator.safetensors"
FORMAT = "semoe-parameter-translator"
# Bump when a change here changes the translator trained from the same pairs.
TRANSLATOR_VERSION = 1
_LAYER = re.compile(r"\.(\d+)\.")


class TranslatorError(ExpertFileError):
    """A translator checkpoint is missing, corrupt, not built, or does not fit the model."""


@dataclass(frozen=True)
class Layout:
    """What a translator writes: for each decoder layer (its index in the module path), the
    target modules' (path, in_features, out_features); rank and alpha of the experts."""

    d_model: int
    rank: int
    alpha: float
    layers: tuple[tuple[int, tuple[tuple[str, int, int], ...]], ...]

    @classmethod
    def of(cls, model: "nn.Module", cfg: ExpertConfig) -> "Layout":
        """The layout of ``cfg.targets`` in ``model`` (grouped by the first number in each path)."""
        groups: dict[int, list[tuple[str, int, int]]] = {}
        for path in target_modules(model, cfg.targets):
            m = _LAYER.search(f".{path}.")
            if m is None:
                raise ValueError(f"target module {path!r} is in no numbered decoder layer")
            linear = model.get_submodule(path)
            groups.setdefault(int(m[1]), []).append((path, linear.in_features, linear.out_features))
        d_model = model.get_input_embeddings().embedding_dim
        return cls(d_model, cfg.rank, cfg.alpha, tuple((i, tuple(mods)) for i, mods in sorted(groups.items())))

    def out_features(self, layer: int) -> int:
        """Outputs of layer ``layer``'s MLP: r·(in + out) per module."""
        return sum(self.rank * (i + o) for _, i, o in self.layers[layer][1])

    def as_json(self) -> str:
        return json.dumps({"d_model": self.d_model, "rank": self.rank, "alpha": self.alpha, "layers": self.layers})

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        d = json.loads(text)
        layers = tuple((int(i), tuple((str(p), int(a), int(b)) for p, a, b in mods)) for i, mods in d["layers"])
        return cls(int(d["d_model"]), int(d["rank"]), float(d["alpha"]), layers)


def _build_module(layout: Layout, hidden: int) -> "nn.Module":
    """The translator's parameters: input normalisation and one MLP per layer of ``layout``."""
    from torch import nn

    return nn.ModuleDict(
        {
            "norm": nn.LayerNorm(layout.d_model, elementwise_affine=False),
            "mlps": nn.ModuleList(
                nn.Sequential(nn.Linear(layout.d_model, hidden), nn.ReLU(), nn.Linear(hidden, layout.out_features(i)))
                for i in range(len(layout.layers))
            ),
        }
    )


class ParameterTranslator:
    """Pooled passage features → LoRA weights of every target module.

    ``features``: (P, L, d) float32, row l being what layer l's MLP reads (``pool``, with
    ``input_layer`` and ``encoder_layers``: how the translator was trained to read passages).
    Returns module path → (A: (P, r, in), B: (P, out, r)), differentiable."""

    def __init__(
        self,
        layout: Layout,
        hidden: int,
        input_layer: str,
        module: "nn.Module | None" = None,
        encoder_layers: int | None = None,
    ):
        self.layout, self.hidden, self.input_layer, self.encoder_layers = layout, hidden, input_layer, encoder_layers
        self.module = module if module is not None else _build_module(layout, hidden)
        self.key: str | None = None  # content key of its checkpoint, once saved or loaded
        self.base_model: str | None = None

    def __call__(self, features: "torch.Tensor") -> dict[str, tuple["torch.Tensor", "torch.Tensor"]]:
        r = self.layout.rank
        x = self.module["norm"](features)
        out = {}
        for li, (_, modules) in enumerate(self.layout.layers):
            flat = self.module["mlps"][li](x[:, li])
            start = 0
            for path, n_in, n_out in modules:
                a = flat[:, start : start + r * n_in].reshape(-1, r, n_in)
                start += r * n_in
                b = flat[:, start : start + n_out * r].reshape(-1, n_out, r)
                start += n_out * r
                out[path] = (a, b)
        return out

    def start_at(self, targets: Sequence[LoraExpert]) -> None:
        """Output bias = the targets' mean A/B, output weights ~ N(0, 1e-7) (module docstring)."""
        import torch

        with torch.no_grad():
            for li, (_, modules) in enumerate(self.layout.layers):
                last = self.module["mlps"][li][-1]
                torch.nn.init.normal_(last.weight, std=1e-7)
                parts = []
                for path, _, _ in modules:
                    for j in (0, 1):
                        parts.append(torch.stack([t.weights[path][j].float() for t in targets]).mean(0).flatten())
                last.bias.copy_(torch.cat(parts))

    def experts(self, passage_ids: Sequence[str], features: "torch.Tensor") -> list[LoraExpert]:
        """One ``LoraExpert`` per passage (no gradient)."""
        import torch

        with torch.no_grad():
            weights = self(features)
        meta = {"source": "translator", **({"translator_key": self.key} if self.key else {})}
        return [
            LoraExpert(
                passage_id=pid,
                rank=self.layout.rank,
                alpha=self.layout.alpha,
                weights={p: (a[i].clone(), b[i].clone()) for p, (a, b) in weights.items()},
                meta=dict(meta),
            )
            for i, pid in enumerate(passage_ids)
        ]


def encoder(model: "nn.Module", encoder_layers: int | None) -> "nn.Module":
    """The base model's decoder cut after its first ``encoder_layers`` layers (None, or at
    least the model's depth: all of them), final norm kept: a shallow copy sharing every
    weight, so the model itself is never modified (another thread may be generating with it)."""
    from torch import nn

    decoder = model.get_decoder()
    layers = decoder.layers
    if encoder_layers is None or encoder_layers >= len(layers):
        return decoder
    cut = copy.copy(decoder)
    cut._modules = dict(decoder._modules)  # copy.copy shares the dict: the model's own layers stay
    cut.layers = nn.ModuleList(list(layers)[:encoder_layers])
    return cut


def pool(
    model: "nn.Module",
    tokenizer,
    texts: Sequence[str],
    layout: Layout,
    input_layer: str,
    max_tokens: int,
    batch_size: int = 16,
    encoder_layers: int | None = None,
) -> "torch.Tensor":
    """(P, L, d) float32: the last token's hidden state of each passage read alone (DyPRAG),
    for each of the ``layout``'s L layers (``last``: the encoder's last layer's, final norm
    applied, for all; ``own``: layer l's output, the encoder's last for layers beyond it).
    ``encoder_layers``: only the first N decoder layers run (module docstring); None: all.
    Passages are right-padded in batches of ``batch_size``, one forward each, and each row
    pools its last real token: causal attention keeps padding out of real tokens, so a batch
    gives each passage what it gets alone."""
    import torch

    device = next(model.parameters()).device
    decoder = encoder(model, encoder_layers)
    depth = len(decoder.layers)
    out = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = [tokenizer(t, truncation=True, max_length=max_tokens)["input_ids"] for t in texts[s : s + batch_size]]
            width = max(len(e) for e in enc)
            ids = torch.zeros((len(enc), width), dtype=torch.long, device=device)
            mask = torch.zeros((len(enc), width), dtype=torch.long, device=device)
            for i, e in enumerate(enc):
                ids[i, : len(e)] = torch.tensor(e)
                mask[i, : len(e)] = 1
            # The decoder alone: no LM head, whose logits over the vocabulary nobody reads.
            states = decoder(
                input_ids=ids, attention_mask=mask, output_hidden_states=input_layer == "own", use_cache=False
            )
            last = torch.tensor([len(e) - 1 for e in enc], device=device)
            rows = torch.arange(len(enc), device=device)
            if input_layer == "last":  # the CausalLM's hidden_states[-1] (normed), as DyPRAG reads it
                feats = states.last_hidden_state[rows, last].float()[:, None].expand(-1, len(layout.layers), -1)
            else:
                feats = torch.stack(
                    [states.hidden_states[min(i + 1, depth)][rows, last].float() for i, _ in layout.layers], 1
                )
            out.append(feats.cpu())
    return torch.cat(out)


def translate(
    translator: ParameterTranslator,
    model: "nn.Module",
    tokenizer,
    passages: Sequence[tuple[str, str]],
    max_tokens: int,
    batch_size: int = 16,
) -> list[LoraExpert]:
    """Experts of ``passages`` ((id, text) pairs): one pooling forward of the base model per
    ``batch_size`` passages and one translator forward."""
    if not passages:
        return []
    feats = pool(
        model,
        tokenizer,
        [t for _, t in passages],
        translator.layout,
        translator.input_layer,
        max_tokens,
        batch_size,
        translator.encoder_layers,
    )
    return translator.experts([pid for pid, _ in passages], feats.to(next(translator.module.parameters()).device))


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Pair:
    """A training pair: a passage with its augmentation and the PRAG expert trained on it."""

    item: TrainingItem
    expert_key: str
    target: LoraExpert


@contextmanager
def _with_lora(model: "nn.Module", weights: dict, scaling: float) -> Iterator[None]:
    """Add ``x @ Aᵀ @ Bᵀ · scaling`` to each module's output, one (A (1, r, in), B (1, out, r))
    for the whole batch, keeping the graph to A and B (inference's stacks are copies)."""
    handles = []

    def hook_for(a, b):
        def hook(module, args, output):
            return output + (args[0] @ a[0].T.to(args[0].dtype)) @ b[0].T.to(args[0].dtype) * scaling

        return hook

    try:
        for path, (a, b) in weights.items():
            handles.append(model.get_submodule(path).register_forward_hook(hook_for(a, b)))
        yield
    finally:
        for h in handles:
            h.remove()


def _sequence_batch(tokenizer, item: TrainingItem, cfg: ExpertConfig, device) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(ids, labels), right-padded, of the passage's PRAG training sequences."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    seqs = build_sequences(tokenizer, item, cfg)
    ids = pad_sequence([torch.tensor(s.ids) for s in seqs], batch_first=True)
    labels = pad_sequence([torch.tensor(s.labels(cfg.loss_on)) for s in seqs], batch_first=True, padding_value=IGNORE)
    return ids.to(device), labels.to(device)


def _lm_terms(model, ids, labels, gen: dict, target: LoraExpert, scaling: float, tcfg: TranslatorConfig):
    """(LM loss with the generated expert, KL(target ‖ generated)); each 0 when its weight is 0."""
    import torch
    import torch.nn.functional as F

    zero = torch.zeros(())
    if tcfg.lm_weight == 0 and tcfg.kl_weight == 0:
        return zero, zero
    targets, keep = labels[:, 1:], labels[:, 1:] != IGNORE
    with _with_lora(model, gen, scaling):
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    logp = F.log_softmax(logits, -1)
    per_token = -logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * keep
    lm = (per_token.sum(1) / keep.sum(1).clamp(min=1)).mean()
    kl = zero
    if tcfg.kl_weight:
        fixed = {p: (a[None], b[None]) for p, (a, b) in target.weights.items()}
        with torch.no_grad(), _with_lora(model, fixed, target.scaling):
            ref = F.log_softmax(model(input_ids=ids, use_cache=False).logits[:, :-1].float(), -1)
        kl = ((ref.exp() * (ref - logp)).sum(-1) * keep).sum(1).mean()
    return lm, kl


def train_translator(
    model: "nn.Module",
    tokenizer,
    pairs: Sequence[Pair],
    experts_cfg: ExpertConfig,
    tcfg: TranslatorConfig,
    on_step: Callable[[TranslatorTrainingRow], None] | None = None,
) -> tuple[ParameterTranslator, list[TranslatorTrainingRow]]:
    """A translator trained on ``pairs`` (module docstring: loss, schedule) and its training
    curve, one row per step (``checkpoint_key`` empty until the checkpoint is stored).
    Raises ``ValueError`` without pairs or when a target expert does not fit the layout."""
    import torch

    if not pairs:
        raise ValueError("a translator needs at least one (passage, expert) training pair")
    layout = Layout.of(model, experts_cfg)
    paths = {p for _, mods in layout.layers for p, _, _ in mods}
    for pair in pairs:
        if set(pair.target.weights) != paths or pair.target.rank != layout.rank:
            raise ValueError(f"expert of passage {pair.item.passage_id!r} does not have the translator's layout")
    device = next(model.parameters()).device
    feats = pool(
        model,
        tokenizer,
        [p.item.passage for p in pairs],
        layout,
        tcfg.input_layer,
        tcfg.max_passage_tokens,
        encoder_layers=tcfg.encoder_layers,
    ).to(device)
    translator = ParameterTranslator(layout, tcfg.hidden, tcfg.input_layer, encoder_layers=tcfg.encoder_layers)
    translator.start_at([p.target for p in pairs])
    translator.module.to(device).train()
    params = list(translator.module.parameters())
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr)
    order, rng, curve = list(range(len(pairs))), random.Random(tcfg.seed), []
    with torch.inference_mode(False), torch.enable_grad():
        batches = [_sequence_batch(tokenizer, p.item, experts_cfg, device) for p in pairs]
        step = 0
        for epoch in range(tcfg.epochs):
            rng.shuffle(order)
            for i in order:
                t0 = time.perf_counter()
                optimizer.zero_grad()
                gen = translator(feats[i : i + 1])
                target = pairs[i].target.weights
                mse = sum(
                    torch.nn.functional.mse_loss(gen[p][j][0], target[p][j].to(device).float())
                    for p in gen
                    for j in (0, 1)
                )
                lm, kl = _lm_terms(model, *batches[i], gen, pairs[i].target, experts_cfg.scaling, tcfg)
                loss = tcfg.mse_weight * mse + tcfg.lm_weight * lm + tcfg.kl_weight * kl
                loss.backward(inputs=params)  # the base model's weights get no gradient
                optimizer.step()
                row = TranslatorTrainingRow(
                    checkpoint_key="",
                    step=step,
                    epoch=epoch,
                    passage_id=pairs[i].item.passage_id,
                    loss=loss.item(),
                    mse=mse.item(),
                    lm=lm.item(),
                    kl=kl.item(),
                    seconds=time.perf_counter() - t0,
                )
                curve.append(row)
                if on_step is not None:
                    on_step(row)
                step += 1
    translator.module.eval()
    return translator, curve


def translator_losses(
    translator: ParameterTranslator,
    model: "nn.Module",
    tokenizer,
    pairs: Sequence[Pair],
    experts_cfg: ExpertConfig,
    tcfg: TranslatorConfig,
) -> list[float]:
    """Each pair's training loss (the weighted sum the trainer minimises) with the
    translator's current weights, without a step."""
    import torch

    device = next(model.parameters()).device
    feats = pool(
        model,
        tokenizer,
        [p.item.passage for p in pairs],
        translator.layout,
        translator.input_layer,
        tcfg.max_passage_tokens,
        encoder_layers=translator.encoder_layers,
    ).to(device)
    out = []
    with torch.no_grad():
        for i, pair in enumerate(pairs):
            gen = translator(feats[i : i + 1])
            mse = sum(
                torch.nn.functional.mse_loss(gen[p][j][0], pair.target.weights[p][j].to(device).float())
                for p in gen
                for j in (0, 1)
            )
            ids, labels = _sequence_batch(tokenizer, pair.item, experts_cfg, device)
            lm, kl = _lm_terms(model, ids, labels, gen, pair.target, experts_cfg.scaling, tcfg)
            out.append(float(tcfg.mse_weight * mse + tcfg.lm_weight * lm + tcfg.kl_weight * kl))
    return out


# --------------------------------------------------------------------------- checkpoint


def save_translator(
    path: str | Path, translator: ParameterTranslator, base_model: str, meta: dict | None = None
) -> None:
    """Write the translator (atomically: a temporary name, then renamed)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in translator.module.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "version": str(TRANSLATOR_VERSION),
        "base_model": base_model,
        "layout": translator.layout.as_json(),
        "hidden": str(translator.hidden),
        "input_layer": translator.input_layer,
        "encoder_layers": "all" if translator.encoder_layers is None else str(translator.encoder_layers),
        **{k: str(v) for k, v in (meta or {}).items()},
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def file_key(path: str | Path) -> str:
    """Content key of a checkpoint file: its sha256 (24 hex digits, as ``content_key``)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise TranslatorError(f"translator checkpoint {path} cannot be read: {e}") from None
    return h.hexdigest()[:24]


def load_translator(path: str | Path, model: "nn.Module | None" = None, device: str = "cpu") -> ParameterTranslator:
    """The translator saved at ``path``; with ``model``, checked to fit it (each module a Linear
    of the model with the layout's shapes). Its ``key`` is the file's content key.

    Raises :class:`TranslatorError` naming the file when it is missing, not a safetensors file,
    not a translator (metadata), from another translator version, or its tensors or layout do
    not match."""
    path = Path(path)
    if not path.is_file():
        raise TranslatorError(f"translator checkpoint not found: {path}")
    meta, tensors = read_safetensors(path, device, "translator checkpoint", TranslatorError)
    if meta.get("format") != FORMAT:
        raise TranslatorError(f"{path} is not a semoe parameter translator (metadata format {meta.get('format')!r})")
    if meta.get("version") != str(TRANSLATOR_VERSION):
        raise TranslatorError(
            f"translator checkpoint {path} is version {meta.get('version')}, this semoe reads {TRANSLATOR_VERSION}: "
            "build it again"
        )
    try:
        layout, hidden, input_layer = Layout.from_json(meta["layout"]), int(meta["hidden"]), meta["input_layer"]
        depth = meta.get("encoder_layers", "all")  # absent: written before the option, read with all layers
        encoder_layers = None if depth == "all" else int(depth)
    except (KeyError, ValueError, TypeError) as e:
        raise TranslatorError(f"translator checkpoint {path} is corrupt: metadata {e}") from None
    module = _build_module(layout, hidden)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise TranslatorError(
            f"translator checkpoint {path} is corrupt: tensors {wrong[:3]} missing or of the wrong shape for its layout"
        )
    module.load_state_dict(tensors)
    module.to(device).eval()
    translator = ParameterTranslator(layout, hidden, input_layer, module, encoder_layers)
    translator.key, translator.base_model = file_key(path), meta.get("base_model")
    if model is not None:
        _check_fits(translator, model, path)
    return translator


def _check_fits(translator: ParameterTranslator, model: "nn.Module", path: Path) -> None:
    from torch import nn

    layout = translator.layout
    if model.get_input_embeddings().embedding_dim != layout.d_model:
        raise TranslatorError(
            f"translator checkpoint {path} reads hidden states of size {layout.d_model}, "
            f"the model has {model.get_input_embeddings().embedding_dim} (trained for {translator.base_model!r})"
        )
    for _, modules in layout.layers:
        for p, n_in, n_out in modules:
            try:
                linear = model.get_submodule(p)
            except AttributeError:
                linear = None
            if not isinstance(linear, nn.Linear) or (linear.in_features, linear.out_features) != (n_in, n_out):
                raise TranslatorError(
                    f"translator checkpoint {path} writes {p!r} as Linear({n_in} -> {n_out}), which the model "
                    f"does not have (trained for {translator.base_model!r})"
                )


# --------------------------------------------------------------------------- cache


@dataclass
class TranslatorRecord:
    """A built translator: its checkpoint's content key (``file_key``: what answers are keyed
    by), path, number of training pairs and training curve (``translator_training`` rows)."""

    key: str
    path: str
    pairs: int
    curve: list[dict]
    trained: bool = False  # by this call


def recipe_key(model_spec: str, corpus_key: str | None, augment_identity: dict, experts_cfg: ExpertConfig) -> str:
    """What decides which translator gets built: model, corpus content (its passages are the
    training pairs), augmentation and PRAG settings and the translator's own settings."""
    return content_key(
        "translator-recipe",
        TRANSLATOR_VERSION,
        model_spec,
        corpus_key,
        augment_identity,
        experts_cfg.trained().identity(),
        experts_cfg.translator.identity(),
    )


def _record(cache: ArtifactCache, pairs_key: str, trained: bool = False) -> TranslatorRecord:
    info = cache.info(TRANSLATOR_KIND, pairs_key)
    path = cache.path(TRANSLATOR_KIND, pairs_key) / CHECKPOINT_FILE
    return TranslatorRecord(info["checkpoint_key"], str(path), info["pairs"], info["curve"], trained)


def built_translator(cache: ArtifactCache, recipe: str) -> TranslatorRecord | None:
    """The translator built for ``recipe`` (``recipe_key``), None when none was."""
    if not cache.is_complete(RECIPE_KIND, recipe):
        return None
    return _record(cache, cache.info(RECIPE_KIND, recipe)["pairs_key"])


def ensure_translator(
    cache: ArtifactCache,
    recipe: str,
    pairs_fn: Callable[[], Sequence[Pair]],
    model_spec: str,
    experts_cfg: ExpertConfig,
    model: "nn.Module",
    tokenizer,
) -> TranslatorRecord:
    """The translator of ``recipe``: reused when built, else trained on ``pairs_fn()`` and
    cached under the content of its pairs (their expert keys, in training order) and its
    settings, so another recipe with the same pairs reuses it."""
    found = built_translator(cache, recipe)
    if found is not None:
        return found
    pairs = list(pairs_fn())
    tcfg = experts_cfg.translator
    pairs_key = content_key(
        "translator", TRANSLATOR_VERSION, model_spec, [p.expert_key for p in pairs], tcfg.identity()
    )
    trained = not cache.is_complete(TRANSLATOR_KIND, pairs_key)

    def build(out: Path) -> dict:
        translator, curve = train_translator(model, tokenizer, pairs, experts_cfg, tcfg)
        save_translator(out / CHECKPOINT_FILE, translator, model_spec, {"pairs_key": pairs_key})
        key = file_key(out / CHECKPOINT_FILE)
        return {
            "checkpoint_key": key,
            "pairs": len(pairs),
            "curve": [r.replace(checkpoint_key=key).as_dict() for r in curve],
        }

    cache.get_or_build(TRANSLATOR_KIND, pairs_key, build)
    cache.get_or_build(RECIPE_KIND, recipe, lambda out: {"pairs_key": pairs_key})
    return _record(cache, pairs_key, trained)
