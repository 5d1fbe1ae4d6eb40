"""Qwen2-MoE: routed experts via ``Qwen2MoeTopKRouter``; the gated shared expert is not routed
and stays untouched. Layers listed in ``mlp_only_layers`` are dense and have no router."""

from semoe.routing.base import RouterAdapter
from semoe.routing.registry import ADAPTERS


@ADAPTERS.register("qwen2_moe")
class Qwen2MoeAdapter(RouterAdapter):
    """Qwen2-MoE (Qwen2MoeTopKRouter inside Qwen2MoeSparseMoeBlock)."""

    family = "qwen2_moe"
    module = "transformers.models.qwen2_moe.modeling_qwen2_moe"
    router_classes = ("Qwen2MoeTopKRouter",)
    plain_lm_head = True
