"""Qwen3-MoE: ``Qwen3MoeTopKRouter``; Qwen3-30B-A3B ships ``norm_topk_prob=True``."""

from semoe.routing.base import RouterAdapter
from semoe.routing.registry import ADAPTERS


@ADAPTERS.register("qwen3_moe")
class Qwen3MoeAdapter(RouterAdapter):
    """Qwen3-MoE (Qwen3MoeTopKRouter inside Qwen3MoeSparseMoeBlock)."""

    family = "qwen3_moe"
    module = "transformers.models.qwen3_moe.modeling_qwen3_moe"
    router_classes = ("Qwen3MoeTopKRouter",)
    plain_lm_head = True
