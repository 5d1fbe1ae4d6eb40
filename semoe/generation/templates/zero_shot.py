"""``popqa`` and ``cwq``: zero-shot, as PRAG (github.com/oneal2000/PRAG) prompts these two
datasets (IRCoT has no exemplars for them, and PRAG adds none, to avoid dataset-specific
prompt engineering): the instruction and, when retrieving, the passages with PRAG's advice to
combine them with the model's own knowledge. ``generation.few_shot`` has no exemplars to take."""

from __future__ import annotations

import dataclasses

from semoe.generation.templates import PromptTemplate, register

POPQA = register(
    PromptTemplate(
        name="popqa",
        description="PopQA: zero-shot, passages combined with the model's own knowledge (PRAG)",
        task="Answer the question.",
        answer_format="gives the answer in a few words",
        with_passages="Use the passages below together with your own knowledge.",
        source="PRAG",
    )
)
register(dataclasses.replace(POPQA, name="cwq", description="ComplexWebQuestions: zero-shot, as popqa (PRAG)"))
