"""Mixtral: ``MixtralTopKRouter`` always renormalises the top-k weights and keeps them in float32."""

from semoe.routing.base import RouterAdapter
from semoe.routing.registry import ADAPTERS


@ADAPTERS.register("mixtral")
class MixtralAdapter(RouterAdapter):
    """Mixtral (MixtralTopKRouter inside MixtralSparseMoeBlock)."""

    family = "mixtral"
    module = "transformers.models.mixtral.modeling_mixtral"
    router_classes = ("MixtralTopKRouter",)
    plain_lm_head = True
    renormalizes = True
    scores_in_logits_dtype = False
