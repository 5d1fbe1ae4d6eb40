"""Passage experts: how a passage is augmented (``augment:``, PRAG's recipe) and how its LoRA
is trained (``experts:``).

Expert training (``ExpertConfig``).

Defaults are PRAG's (rank 2, alpha 32, no dropout, lr 3e-4, one epoch over the passage's
training sequences, LoRA on the MLP projections, torch AdamW with its default weight decay).
``identity()`` is what decides an expert's weights and so goes into its cache key; the
operational settings (batch size, loss reporting) are left out.

Where a method's experts come from (``source``): ``trained`` (PRAG: augment, then train one
LoRA per passage) or ``translator`` (DyPRAG: a parameter translator maps the passage to its
LoRA in one forward; ``translator:``, ``TranslatorConfig``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from semoe.config.base import Section


class TranslatorConfig(Section):
    """A DyPRAG parameter translator (Tan et al. 2025, github.com/Trae1ounG/DyPRAG): per
    decoder layer a small MLP maps the passage's pooled hidden state to the rank-r LoRA A/B of
    every target module of that layer. It is trained on (passage, PRAG expert) pairs of
    ``passages`` corpus passages (augmented and trained with the ``augment:``/``experts:``
    settings). Loss weights default to DyPRAG's (``train_dyprag.py``: 100 · MSE of the
    parameters + 1 · LM loss of the augmented QA with the generated expert + 0.01 · KL to the
    target expert's next-token distributions).

    ``checkpoint``: a translator file to use as it is (none is trained); its content, not its
    path, is what answers are keyed by."""

    operational = ("checkpoint", "batch_passages", "save_experts")

    passages: PositiveInt = Field(16, description="corpus passages whose PRAG experts are the training pairs")
    seed: int = Field(0, description="which corpus passages: the `passages` smallest hashes of (seed, passage id)")
    hidden: PositiveInt = Field(32, description="hidden units of each layer's MLP (DyPRAG's projector_p: 32)")
    input_layer: Literal["last", "own"] = Field(
        "last",
        description="pooled hidden state fed to layer l's MLP: the last layer's (DyPRAG) or layer l's own output",
    )
    encoder_layers: PositiveInt | None = Field(
        4,
        description="decoder layers of the base model that read the passage (the first N, final norm applied; "
        "None or more than the model has: all, as DyPRAG); a given checkpoint reads as it was trained. 4: the "
        "smallest measured depth whose held-out QA gain is not clearly below all layers' (semoe.experts.translator)",
    )
    max_passage_tokens: PositiveInt = Field(512, description="passage tokens read (longer passages are cut)")
    epochs: PositiveInt = Field(2, description="passes over the training pairs (one pair per step, shuffled)")
    lr: PositiveFloat = Field(1e-3, description="AdamW learning rate (DyPRAG: 1e-5 over ~20k pairs)")
    mse_weight: float = Field(100.0, ge=0.0, description="weight of the parameter MSE to the PRAG expert")
    lm_weight: float = Field(1.0, ge=0.0, description="weight of the augmented QA's LM loss with the generated expert")
    kl_weight: float = Field(0.01, ge=0.0, description="weight of KL(target expert ‖ generated expert) per token")
    checkpoint: str | None = Field(None, description="use this translator file instead of training one")
    batch_passages: PositiveInt = Field(16, description="passages translated per forward")
    save_experts: bool = Field(False, description="also write translated experts to the artifact cache")

    @model_validator(mode="after")
    def _some_loss(self) -> "TranslatorConfig":
        if self.mse_weight == self.lm_weight == self.kl_weight == 0:
            raise ValueError("mse_weight, lm_weight and kl_weight are all 0: nothing to train on")
        return self

    def identity(self) -> dict:
        """The training settings; with a given ``checkpoint`` only how it is read (the file's
        content key enters the answers' identity instead, ``semoe.identity.answer_scope``)."""
        if self.checkpoint is not None:
            return {"checkpoint": "given", "max_passage_tokens": self.max_passage_tokens}
        return super().identity()


class ExpertConfig(Section):
    operational = ("batch_passages", "micro_batch", "measure_loss")

    rank: PositiveInt = 2
    alpha: PositiveFloat = 32.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lr: PositiveFloat = 3e-4
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW's; 0.01 is torch's default, which PRAG keeps")
    epochs: PositiveInt = 1
    targets: list[str] = Field(
        default_factory=lambda: ["gate_proj", "up_proj", "down_proj"],
        description="names of the nn.Linear modules that get a LoRA (matched on the last path component)",
    )
    init_seed: int = Field(42, description="seed of the shared initial LoRA every expert starts from (PRAG: 42)")
    recipe: Literal["prag", "all"] = Field(
        "prag",
        description="prag: the first ceil(n_qa/2) QA pairs once with the passage and once per rewrite, the others "
        "without a passage (3 QA + 1 rewrite: 5 sequences); all: every QA pair with the passage, with each "
        "rewrite and without (3 QA + 1 rewrite: 9 sequences)",
    )
    target: Literal["full_answer", "answer"] = Field(
        "full_answer", description="assistant turn: the full-sentence answer, or PRAG's 'The answer is {answer}.'"
    )
    loss_on: Literal["sequence", "answer"] = Field(
        "sequence", description="sequence: every token (PRAG); answer: only the assistant turn"
    )
    max_length: PositiveInt = Field(3000, description="tokens per training sequence; longer ones are cut (PRAG: 3000)")
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="dtype of the frozen base model's matmuls in the batched trainer (float32: PRAG's, same experts "
        "as the peft loop); LoRA weights, optimizer, residual stream and loss stay float32. bfloat16 trains about "
        "2x faster on an AMX CPU with the same final loss (not the same weights: Adam amplifies rounding)",
    )
    batch_passages: PositiveInt = Field(8, description="passages trained together in lockstep by the batched trainer")
    micro_batch: PositiveInt = Field(
        8,
        description="sequences per forward/backward in the batched trainer (bounds activation memory); each "
        "lockstep step accumulates the gradients of ceil(batch_passages / micro_batch) of them",
    )
    measure_loss: bool = Field(
        True, description="evaluate each expert's loss on its sequences before and after training (two extra forwards)"
    )
    source: Literal["trained", "translator"] = Field(
        "trained",
        description="trained: augment + train a LoRA per passage (PRAG); translator: a DyPRAG parameter translator "
        "maps each passage to its LoRA (trained on PRAG experts of `translator.passages` corpus passages)",
    )
    translator: TranslatorConfig = TranslatorConfig()

    @field_validator("targets")
    @classmethod
    def _targets_non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list at least one module name")
        return sorted(set(v))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def identity(self) -> dict:
        """With ``source: trained``, the settings of the trained experts alone: configs without
        a translator keep their hash and their experts' cache keys."""
        d = super().identity()
        if self.source == "trained":
            d.pop("source")
            d.pop("translator")
        return d

    def trained(self) -> "ExpertConfig":
        """These settings with ``source: trained``: what the PRAG experts (a translator's
        training targets) are trained and keyed with."""
        return self.model_copy(update={"source": "trained"})

    def init_identity(self) -> dict:
        """The settings the shared initial LoRA depends on."""
        return {"rank": self.rank, "alpha": self.alpha, "targets": self.targets, "init_seed": self.init_seed}


class AugmentConfig(Section):
    """How each passage is rewritten and turned into QA pairs.

    The cache key holds only what decides the content of a success (passage text,
    augmenting model, prompt version, ``n_qa``, ``n_rewrites``, ``min_rewrites``); the other settings change
    how hard the pipeline tries, not what a good augmentation is.
    """

    operational = ("batch_size", "chunk_size")

    model: str | None = Field(None, description="augmenting model spec; None = the generator's model.spec")
    n_rewrites: int = Field(1, ge=0, description="rewrites per passage (PRAG: 1)")
    n_qa: int = Field(3, ge=1, le=10, description="QA pairs asked for per passage (PRAG: 3)")
    min_rewrites: int = Field(
        0,
        ge=0,
        description="accepted rewrites a passage needs; with fewer it still trains on its QA pairs (the "
        "failed rewrites' reasons are recorded)",
    )
    min_qa: int = Field(1, ge=1, description="usable QA pairs an answer needs to be accepted")
    max_attempts: int = Field(3, ge=1, le=10, description="generations per rewrite / QA list before the passage fails")
    retry_temperature: float = Field(
        0.7, gt=0, le=2, description="sampling temperature of retries (attempt 1 is greedy)"
    )
    seed: int = Field(0, description="seed of the sampled retries")
    grounded: bool = Field(
        True,
        description=(
            "keep only QA pairs whose answer occurs in the passage and whose question names nothing absent from it"
        ),
    )
    batch_size: int = Field(8, ge=1, description="conversations per model.generate call")
    chunk_size: int = Field(32, ge=1, description="passages generated and cached together (resume granularity)")
    rewrite_max_new_tokens: int = Field(192, ge=8, le=4096)
    qa_max_new_tokens: int = Field(200, ge=8, le=4096)
    retry_failed: bool = Field(False, description="regenerate passages whose cached augmentation failed")

    @model_validator(mode="after")
    def _min_qa_le_n_qa(self) -> "AugmentConfig":
        if self.min_qa > self.n_qa:
            raise ValueError(f"min_qa ({self.min_qa}) must not exceed n_qa ({self.n_qa})")
        if self.min_rewrites > self.n_rewrites:
            raise ValueError(f"min_rewrites ({self.min_rewrites}) must not exceed n_rewrites ({self.n_rewrites})")
        return self

    def augmenting_model(self, generator_spec: str) -> str:
        """The spec to load and to key the cache with."""
        return self.model or generator_spec
