"""Greedy generation with the KV cache, optionally recording which experts every token used."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Generation:
    prompt: str
    text: str  # the continuation only
    token_ids: list[int]  # every token the model read: BOS, the prompt (possibly left-truncated), the continuation
    num_experts: int
    # With analyze=True, aligned with token_ids: experts[token][layer] = the top-k expert ids, and their weights.
    experts: list[list[list[int]]] | None = None
    expert_weights: list[list[list[float]]] | None = None

    def expert_usage(self) -> list[list[int]]:
        """counts[layer][expert]: how many tokens picked that expert (in their top-k) in that layer."""
        if self.experts is None:
            raise ValueError("expert usage needs generate(..., analyze=True)")
        counts = [[0] * self.num_experts for _ in self.experts[0]]
        for token in self.experts:
            for layer, chosen in enumerate(token):
                for e in chosen:
                    counts[layer][e] += 1
        return counts


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 64, analyze: bool = False) -> Generation:
    """Greedy decoding until EOS or ``max_new_tokens``. The prompt is left-truncated (keeping BOS)
    so that prompt + continuation fit ``max_seq_len``. With ``analyze`` the last generated token is
    also fed once, so every token in ``token_ids`` has its expert choices."""
    import torch

    limit = model.config.max_seq_len
    if not 0 < max_new_tokens < limit:
        raise ValueError(f"max_new_tokens must be between 1 and {limit - 1}")
    ids = tokenizer.encode(prompt)
    keep = limit - max_new_tokens
    if len(ids) > keep:
        ids = ids[:1] + ids[len(ids) - keep + 1 :]
    n_prompt = len(ids)

    cache = model.new_cache()
    experts, weights = [], []

    def step(new_ids: list[int]) -> int:
        out = model(torch.tensor([new_ids]), cache)
        if analyze:
            experts.extend(torch.stack([r.indices for r in out.routing], dim=1).tolist())
            weights.extend(torch.stack([r.weights for r in out.routing], dim=1).float().tolist())
        return int(out.logits[0, -1].argmax())

    with torch.no_grad():
        next_id = step(ids)
        while len(ids) - n_prompt < max_new_tokens and next_id != tokenizer.eos_token_id:
            ids.append(next_id)
            if analyze or len(ids) - n_prompt < max_new_tokens:
                next_id = step([next_id])
    return Generation(
        prompt,
        tokenizer.decode(ids[n_prompt:]),
        ids,
        model.config.num_experts,
        experts if analyze else None,
        weights if analyze else None,
    )
