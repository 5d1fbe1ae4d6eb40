"""Triggered retrieval during generation: the DRAGIN family (FL-RAG, FS-RAG, FLARE, DRAGIN).

- ``engine``: :class:`~semoe.generation.triggered.engine.TriggeredGenerator`, the step loop
  (generate, trigger, query, retrieve, regenerate), its ``Settings`` and ``Knowledge`` hook;
- ``triggers``: when to retrieve (FL-RAG, FS-RAG, FLARE's token probability, DRAGIN's RIND);
- ``query``: query formulation (DRAGIN's QFS and the other formulations);
- ``words``: content words and word spans of tokens;
- ``attention``: last-layer attention recorded while decoding;
- ``kv_session``: the KV cache reused across steps, retrievals and questions.

Importing any of them is cheap: torch and transformers are imported inside the functions
that run the model.
"""
