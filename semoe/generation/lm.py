"""Batched greedy chat generation over a Hugging Face causal LM."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

Message = dict  # {"role": ..., "content": ...}


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float  # this conversation's share of its batch's wall time


class ChatLM:
    """Renders conversations with the model's chat template and decodes greedily in
    length-sorted batches (left padding), so a batch wastes little on padding."""

    def __init__(self, model, tokenizer, system_prompt: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt

    @property
    def device(self):
        return next(self.model.parameters()).device

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
    ) -> list[Generation]:
        """Greedy replies in input order. ``on_batch(indices)`` is called before each model
        batch with the input indices of its rows, e.g. to set per-row experts."""
        import torch

        prompts = [self.render(c) for c in conversations]
        lengths = [len(self.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        results: list[Generation | None] = [None] * len(prompts)
        eos = self.tokenizer.eos_token_id
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            if on_batch is not None:
                on_batch(idx)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            share = (time.perf_counter() - t0) / len(idx)
            new = out[:, enc["input_ids"].shape[1] :]
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                n_new = next((j + 1 for j, t in enumerate(ids) if t == eos), len(ids))
                text = self.tokenizer.decode(ids[:n_new], skip_special_tokens=True)
                results[i] = Generation(text=text.strip(), prompt_tokens=lengths[i], new_tokens=n_new, seconds=share)
        return results  # type: ignore[return-value]
