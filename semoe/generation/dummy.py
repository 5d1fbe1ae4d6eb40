"""The ``dummy`` model: a ``ChatLM`` without weights, for tests of everything around generation.

Spec ``dummy`` or ``dummy:<seed>`` (an integer; ``dummy`` is seed 0). It imports no torch: flow,
store, resume, runner and bad-input tests run in seconds through the same ``ChatLM`` interface
the standard methods use. Its reply to a conversation is ``"The answer is W."`` where W is a
word of the last user turn (the question and its passages) chosen by a SHA-256 of the seed and
that turn, so a rerun, another process or another batch order gives the same reply.
Tokens are words and punctuation marks (each with its leading whitespace), counted the same
for prompts, budgets and replies. Methods that need model internals (logits, attention, LoRA
experts) declare ``Method.needs_weights`` and are refused by ``semoe.checks``; code that reaches
for ``.model`` or ``.tokenizer`` anyway gets a ``ModelLoadError`` saying a real LM is needed.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Callable, Sequence

from semoe.generation.lm import ChatLM, Generation, Message, StopWhen
from semoe.models.loading import DUMMY, needs_real_lm

CONTEXT_LENGTH = 2048  # tokens, as the tiny test Llama; enough for few-shot RAG prompts
_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+$")
_WORD = re.compile(r"\w+")
_USER = "<|user|>\n"
_TURN = re.compile(r"<\|(system|user|assistant)\|>\n")


class DummyChatLM(ChatLM):
    """A weightless ``ChatLM`` (see the module docstring): deterministic replies, real token
    counts, batches and ``on_batch`` calls as ``ChatLM.generate_rendered`` makes them."""

    def __init__(self, seed: int = 0, system_prompt: str | None = None):
        self.seed = seed
        self.spec = DUMMY if seed == 0 else f"{DUMMY}:{seed}"
        self.system_prompt = system_prompt

    @property
    def model(self):
        raise needs_real_lm(self.spec, "this method (model internals: logits, attention or LoRA experts)")

    @property
    def tokenizer(self):
        raise needs_real_lm(self.spec, "this method (a tokenizer)")

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def context_length(self) -> int:
        return CONTEXT_LENGTH

    @staticmethod
    def tokens(text: str) -> list[str]:
        """``text`` cut into tokens; their concatenation is ``text``."""
        return _TOKEN.findall(text)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.tokens(self.render(messages)))

    def token_ends(self, text: str) -> list[int]:
        ends, total = [], 0
        for token in self.tokens(text):
            total += len(token)
            ends.append(total)
        return ends

    def render(self, messages: Sequence[Message]) -> str:
        """Role-tagged turns ending in an open assistant turn (a chat template's shape), so the
        last user turn can be found again in the rendered prompt."""
        msgs = list(messages)
        if self.system_prompt and (not msgs or msgs[0]["role"] != "system"):
            msgs = [{"role": "system", "content": self.system_prompt}] + msgs
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in msgs) + "<|assistant|>\n"

    def reply(self, prompt: str, salt: str = "") -> str:
        """The full reply to a rendered prompt: a hash-chosen word of its last user turn."""
        turn = prompt.rsplit(_USER, 1)[-1]
        turn = _TURN.split(turn, 1)[0]  # up to the next turn (the open assistant turn)
        words = _WORD.findall(turn) or ["unknown"]
        h = hashlib.sha256(f"{self.seed}\0{salt}\0{turn}".encode()).digest()
        return f"The answer is {words[int.from_bytes(h[:8], 'big') % len(words)]}."

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
        """As ``ChatLM.generate_rendered``: batches in order of prompt length, ``on_batch`` before
        each, replies cut at ``max_new_tokens`` tokens or where ``stop_when`` accepts them.
        Sampling (temperature > 0) salts the choice with ``seed`` and the batch number."""
        n_tokens = [len(self.tokens(p)) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: n_tokens[i])
        results: list[Generation | None] = [None] * len(prompts)
        for n, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start : start + batch_size]
            if on_batch is not None:
                on_batch(idx)
            t0 = time.perf_counter()
            salt = f"{temperature}:{seed + n}" if temperature > 0 else ""
            texts = [self._decode(self.reply(prompts[i], salt), max_new_tokens, stop_when) for i in idx]
            share = (time.perf_counter() - t0) / len(idx)
            for i, (text, n_new) in zip(idx, texts):
                results[i] = Generation(text=text, prompt_tokens=n_tokens[i], new_tokens=n_new, seconds=share)
        return results  # type: ignore[return-value]

    def _decode(self, reply: str, max_new_tokens: int, stop_when: StopWhen | None) -> tuple[str, int]:
        """(text, new tokens) of ``reply`` decoded token by token as a model would emit it."""
        tokens = self.tokens(reply)[:max_new_tokens]
        for n in range(1, len(tokens) + 1):
            if stop_when is not None and stop_when("".join(tokens[:n])):
                return "".join(tokens[:n]), n
        return "".join(tokens), len(tokens)
