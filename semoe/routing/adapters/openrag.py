"""Open-RAG (``semoe.models.openrag``): the router of each MLP's adapter MoE,
``OpenRagTopKRouter`` (``mlp.moe_adapter.router``), mirrors ``OlmoeTopKRouter``; its sibling
``experts`` runs the adapters as OLMoE's experts do. Softmax over the k chosen logits is the
renormalised top-k of the softmax, so the family renormalises.
"""

from semoe.routing.base import RouterAdapter
from semoe.routing.registry import ADAPTERS


@ADAPTERS.register("openrag")
class OpenRagRouterAdapter(RouterAdapter):
    """Open-RAG (OpenRagTopKRouter: top-2 of 8 adapters in every Llama MLP)."""

    family = "openrag"
    module = "semoe.models.openrag.modeling"
    router_classes = ("OpenRagTopKRouter",)
    plain_lm_head = True
    renormalizes = True
