"""semoe's own MoE LM (``semoe.moe_lm``): its routers mirror ``OlmoeTopKRouter`` (same forward and
outputs, ``top_k``/``num_experts``/``norm_topk_prob``), so the OLMoE conventions apply as they are.

The recurrent router reads and writes its state through the carry the MoE block binds around
the call, not through arguments; a patched forward runs the original one, so the state advances
exactly as without a policy.
"""

from semoe.routing.base import RouterAdapter
from semoe.routing.registry import ADAPTERS


@ADAPTERS.register("semoe_moe_lm")
class SemoeMoeLMAdapter(RouterAdapter):
    """semoe MoE LM (SemoeLinearRouter / SemoeRecurrentRouter inside SemoeSparseMoeBlock)."""

    family = "semoe_moe_lm"
    module = "semoe.moe_lm.routers"
    router_classes = ("SemoeLinearRouter", "SemoeRecurrentRouter")
