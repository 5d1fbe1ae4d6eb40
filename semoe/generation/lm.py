"""Batched chat generation over a Hugging Face causal LM."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from semoe.config import ConfigError
from semoe.generation.kv_cache import in_place_cache
from semoe.generation.prompts import FittedPrompt, PromptBudget, fit_messages

if TYPE_CHECKING:
    from semoe.config import GenerationConfig
    from semoe.data.schema import Passage
    from semoe.generation.templates import PromptTemplate

log = logging.getLogger(__name__)

Message = dict  # {"role": ..., "content": ...}
StopWhen = Callable[[str], bool]  # reply text so far -> the reply is complete

MIN_SHARED_PREFIX = 16  # tokens; below this a batch-1 prefix pass costs more than it saves
# transformers sets model_max_length to int(1e30) when a tokenizer does not know its model's.
SANE_MODEL_MAX_LENGTH = 10_000_000


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float  # this conversation's share of its batch's wall time


@dataclass
class ScoredGeneration:
    """A greedy reply with the log-probabilities it was decoded from: ``token_logprobs[j]``
    is log p of new token ``j``; ``watched[j][i]`` is log p of ``watch[i]`` at that position
    (the distribution token ``j`` was chosen from). EOS, when it ended the reply, is the
    last token."""

    tokens: list[int]
    text: str  # decoded without special tokens
    token_logprobs: list[float]
    watched: list[list[float]]
    prompt_tokens: int
    seconds: float  # this prompt's share of its batch's wall time


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def _common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    n = min(len(r) for r in rows)
    first = rows[0]
    for i in range(n):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return n


class _RowStop:
    """transformers stopping criterion: a row is done once ``stop_when`` accepts its reply
    so far. Stateless: it judges whichever rows are still in the batch."""

    def __init__(self, tokenizer, prompt_length: int, stop_when: StopWhen):
        self.tokenizer, self.prompt_length, self.stop_when = tokenizer, prompt_length, stop_when

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor([self.stop_when(t) for t in texts], dtype=torch.bool, device=input_ids.device)


# Per-row model inputs that ``_update_model_kwargs_for_generation`` carries from step to step.
_BATCH_KWARGS = ("attention_mask", "position_ids", "token_type_ids")


def _decode_dropping_finished(
    model,
    input_ids,
    logits_processor,
    stopping_criteria,
    generation_config,
    on_rows: Callable[[list[int]], None] | None = None,
    synced_gpus: bool = False,
    streamer=None,
    **model_kwargs,
) -> list[list[int]]:
    """Decoding loop for ``model.generate(custom_generate=...)``: transformers' own sampling
    loop (``GenerationMixin._sample``: the same prefill, logits processors, greedy argmax or
    multinomial draw and stopping criteria), except that a row leaves the batch as soon as a
    criterion stops it (EOS, ``stop_when``), taking its KV-cache and attention-mask rows with
    it, so no decode step is spent on finished rows. Greedy rows get the tokens they would
    get in the full batch (``tests/generation/test_generation_batching.py``); sampled rows draw from the
    same distributions, but the seeded stream is shared by fewer rows.

    Returns the new tokens of each input row, its stopping token included. ``on_rows(rows)``
    is called with the input row positions still decoding whenever rows leave."""
    import torch

    if synced_gpus or streamer is not None or generation_config.return_dict_in_generate:
        raise ValueError("decoding that drops finished rows supports neither synced GPUs, streamers nor dict outputs")
    rows = list(range(input_ids.shape[0]))  # input row of each batch row
    new: list[list[int]] = [[] for _ in rows]
    outputs = model._prefill(input_ids, generation_config, model_kwargs)
    while True:
        model_kwargs = model._update_model_kwargs_for_generation(outputs, model_kwargs)
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)
        del outputs
        scores = logits_processor(input_ids, logits)
        if generation_config.do_sample:
            tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            tokens = torch.argmax(scores, dim=-1)
        input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
        for row, token in zip(rows, tokens.tolist()):
            new[row].append(token)
        done = stopping_criteria(input_ids, scores)
        if bool(done.all()):
            return new
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            input_ids = input_ids[keep]
            for key in _BATCH_KWARGS:
                value = model_kwargs.get(key)
                if value is not None:
                    if value.shape[0] != done.shape[0]:  # e.g. 3-D rotary positions: rows are not dim 0
                        raise ValueError(
                            f"cannot drop finished rows: model input {key!r} of shape "
                            f"{tuple(value.shape)} is not batch-first"
                        )
                    model_kwargs[key] = value[keep]
            model_kwargs["cache"].batch_select_indices(keep)
            rows = [rows[i] for i in keep.tolist()]
            if on_rows is not None:
                on_rows(rows)
        model_inputs = model.prepare_inputs_for_generation(input_ids, next_sequence_length=1, **model_kwargs)
        outputs = model(**model_inputs, return_dict=True)


class ChatLM:
    """Renders conversations with the model's chat template and decodes in length-sorted
    batches (left padding), so a batch wastes little on padding."""

    def __init__(self, model, tokenizer, system_prompt: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        """Tokens the model attends over: its config's ``max_position_embeddings``, else the
        tokenizer's ``model_max_length`` when set; None when neither says."""
        config = self.model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        n = getattr(config, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            return n
        n = getattr(self.tokenizer, "model_max_length", None)
        return n if isinstance(n, int) and 0 < n < SANE_MODEL_MAX_LENGTH else None

    def prompt_budget(self, g: "GenerationConfig", max_new_tokens: int) -> PromptBudget:
        """The prompt budget of ``g`` (its ``max_passage_tokens`` / ``max_prompt_tokens``) for
        replies of up to ``max_new_tokens``. Raises ConfigError when prompt and reply cannot
        both fit the model's context."""

        context = self.context_length
        if context is not None and max_new_tokens >= context:
            raise ConfigError(
                f"{max_new_tokens} new tokens leave no room for a prompt in the model's context of {context} tokens"
            )
        if g.max_prompt_tokens is not None:
            if context is not None and g.max_prompt_tokens + max_new_tokens > context:
                raise ConfigError(
                    f"generation.max_prompt_tokens={g.max_prompt_tokens} plus {max_new_tokens} new tokens exceed "
                    f"the model's context of {context} tokens"
                )
            return PromptBudget(g.max_passage_tokens, g.max_prompt_tokens, "generation.max_prompt_tokens")
        if context is None:
            log.warning(
                "the model's context length is unknown: prompts are limited only per passage; "
                "set generation.max_prompt_tokens"
            )
            return PromptBudget(g.max_passage_tokens, None)
        return PromptBudget(
            g.max_passage_tokens,
            context - max_new_tokens,
            f"context of {context} tokens minus {max_new_tokens} new tokens",
        )

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of the rendered conversation, as ``generate`` feeds it to the model."""
        return len(self.tokenizer(self.render(messages), add_special_tokens=False).input_ids)

    def token_ends(self, text: str) -> list[int]:
        """End offset in ``text`` of each of its tokens. Slow tokenizers have no offsets: their
        decoded pieces' lengths are summed, which can only cut earlier (pieces lose spaces)."""
        tok = self.tokenizer
        if getattr(tok, "is_fast", False):
            offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            return [end for _, end in offsets]
        ends, total = [], 0
        for token in tok(text, add_special_tokens=False).input_ids:
            total = min(total + len(tok.decode([token])), len(text))
            ends.append(total)
        return ends

    def fit(
        self,
        question: str,
        passages: "Sequence[Passage] | None",
        *,
        few_shot: int,
        cot: bool,
        budget: PromptBudget,
        template: "PromptTemplate | None" = None,
    ) -> FittedPrompt:
        """``build_messages`` with ``template`` (None: ``generic``) fitted to ``budget`` with this
        model's tokenizer and chat template (see ``semoe.generation.prompts.fit_messages``;
        raises PromptTooLongError)."""
        return fit_messages(question, passages, few_shot, cot, budget, self.count_tokens, self.token_ends, template)

    def render(self, messages: Sequence[Message]) -> str:
        msgs = list(messages)
        if self.system_prompt and (not msgs or msgs[0]["role"] != "system"):
            msgs = [{"role": "system", "content": self.system_prompt}] + msgs
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(m["content"] for m in msgs) + "\n"

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        max_new_tokens: int,
        batch_size: int = 8,
        on_batch: Callable[[list[int]], None] | None = None,
        *,
        stop_when: StopWhen | None = None,
    ) -> list[Generation]:
        """Greedy replies in input order. ``on_batch(indices)`` is called with the input
        indices of a model batch's rows before it runs, and again whenever finished rows
        leave it, e.g. to set per-row experts. A reply ends at EOS, after ``max_new_tokens``
        or once ``stop_when`` accepts it."""
        gens = self.generate_rendered(
            [self.render(c) for c in conversations], max_new_tokens, batch_size, stop_when=stop_when, on_batch=on_batch
        )
        return [Generation(g.text.strip(), g.prompt_tokens, g.new_tokens, g.seconds) for g in gens]

    def generate_rendered(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        batch_size: int = 8,
        *,
        temperature: float = 0.0,
        seed: int = 0,
        stop_when: StopWhen | None = None,
        on_batch: Callable[[list[int]], None] | None = None,
    ) -> list[Generation]:
        """Replies to already rendered prompts (so a reply can be prefilled), in input order.

        Greedy at temperature 0, else sampled with a seed per batch: reruns of the same inputs
        give the same replies, and the caller's RNG state is left alone. The token prefix all
        prompts of a batch share (instructions, few-shot turns) is run once and its KV cache
        shared by the rows, unless ``on_batch`` gives rows different weights (experts). A row
        leaves its batch once it is finished (``_decode_dropping_finished``); ``on_batch`` is
        called for each batch and again with the rows left whenever rows leave."""
        import torch

        tok = self.tokenizer
        ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
        mode = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        results: list[Generation | None] = [None] * len(prompts)
        with torch.random.fork_rng(devices=[]):
            for n, start in enumerate(range(0, len(order), batch_size)):
                idx = order[start : start + batch_size]
                on_rows = None
                if on_batch is not None:
                    on_batch(idx)
                    on_rows = lambda rows, idx=idx: on_batch([idx[r] for r in rows])  # noqa: E731
                torch.manual_seed(seed + n)
                t0 = time.perf_counter()
                replies = self._generate_batch(
                    [ids[i] for i in idx], max_new_tokens, stop_when, on_rows, share_prefix=on_batch is None, **mode
                )
                share = (time.perf_counter() - t0) / len(idx)
                for i, new in zip(idx, replies):
                    text = tok.decode(new, skip_special_tokens=True)
                    results[i] = Generation(text=text, prompt_tokens=len(ids[i]), new_tokens=len(new), seconds=share)
        return results  # type: ignore[return-value]

    def generate_scored(
        self, prompts: Sequence[str], max_new_tokens: int, watch: Sequence[int], batch_size: int = 8
    ) -> list[ScoredGeneration]:
        """Greedy replies to rendered prompts, in input order, with their log-probabilities
        (:class:`ScoredGeneration`): one ``generate`` per batch of length-sorted, left-padded
        prompts, whose raw logits (``output_logits``: no logits processor applied) are
        normalised per step. A row's reply ends at its first EOS; the padding after it is
        dropped, so a reply equals the prompt's batch-1 reply."""
        import torch

        tok, device = self.tokenizer, self.device
        ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos, watch_ids = _eos_ids(self.model, tok), torch.tensor(list(watch), dtype=torch.long)
        results: list[ScoredGeneration | None] = [None] * len(prompts)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for b, i in enumerate(idx):
                input_ids[b, width - len(ids[i]) :], mask[b, width - len(ids[i]) :] = torch.tensor(ids[i]), 1
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            logp = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1).cpu()  # (B, steps, vocab)
            share = (time.perf_counter() - t0) / len(idx)
            for b, i in enumerate(idx):
                new = out.sequences[b, width:].tolist()
                n = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
                rows = logp[b, :n]
                results[i] = ScoredGeneration(
                    tokens=new[:n],
                    text=tok.decode(new[:n], skip_special_tokens=True),
                    token_logprobs=rows.gather(1, torch.tensor(new[:n]).unsqueeze(1)).squeeze(1).tolist(),
                    watched=rows[:, watch_ids].tolist(),
                    prompt_tokens=len(ids[i]),
                    seconds=share,
                )
        return results  # type: ignore[return-value]

    def _generate_batch(
        self,
        rows: list[list[int]],
        max_new_tokens: int,
        stop_when: StopWhen | None,
        on_rows: Callable[[list[int]], None] | None,
        share_prefix: bool,
        **mode,
    ) -> list[list[int]]:
        """New tokens of each row (its stopping token included). With a shared prefix the
        layout is ``prefix | left padding | suffix``: positions come from the attention mask,
        so every row sees the prefix at the positions its batch-1 pass computed."""
        import torch
        from transformers import StoppingCriteriaList

        tok, device = self.tokenizer, self.device
        shared = _common_prefix_length(rows) if share_prefix and len(rows) > 1 else 0
        shared = min(shared, min(len(r) for r in rows) - 1)  # every row keeps a token to run
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        width = max(len(r) for r in rows) - shared
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        input_ids = torch.full((len(rows), shared + width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for b, r in enumerate(rows):
            input_ids[b, :shared], mask[b, :shared] = torch.tensor(r[:shared]), 1
            suffix = r[shared:]
            input_ids[b, shared + width - len(suffix) :] = torch.tensor(suffix)
            mask[b, shared + width - len(suffix) :] = 1
        cache = in_place_cache(self.model.config, reserve=max_new_tokens)
        kwargs = {"cache": cache}
        if shared:
            with torch.inference_mode():  # only the cache is wanted: no logits over the whole prefix
                self.model(input_ids=input_ids[:1, :shared].to(device), cache=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(len(rows))
        if stop_when is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_RowStop(tok, input_ids.shape[1], stop_when)])
        with torch.inference_mode():
            return self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                on_rows=on_rows,
                custom_generate=_decode_dropping_finished,
                **mode,
                **kwargs,
            )
