"""OLMoE: ``OlmoeTopKRouter`` is the ``gate`` of ``OlmoeSparseMoeBlock``.

OLMoE-1B-7B ships ``norm_topk_prob=False``: its top-k weights are raw softmax probabilities.
"""

from semoe.routing.base import RouterAdapter
from semoe.routing.registry import ADAPTERS


@ADAPTERS.register("olmoe")
class OlmoeAdapter(RouterAdapter):
    """OLMoE (OlmoeTopKRouter inside OlmoeSparseMoeBlock)."""

    family = "olmoe"
    module = "transformers.models.olmoe.modeling_olmoe"
    router_classes = ("OlmoeTopKRouter",)
    plain_lm_head = True
