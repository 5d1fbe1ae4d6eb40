"""``iirc``: questions about one Wikipedia article that need facts from the articles it links
to (Ferguson et al. 2020); answers are spans, numbers (often computed) or yes/no. Chain-of-
thought exemplars in the style DRAGIN (github.com/oneal2000/DRAGIN) uses for the dataset: the
reply gathers the linked facts, does the arithmetic, then "So the answer is ...". Written anew
from well-known facts."""

from __future__ import annotations

from semoe.generation.templates import Exemplar, PromptTemplate, register

register(
    PromptTemplate(
        name="iirc",
        description="IIRC: span, number and yes/no CoT exemplars with arithmetic over linked facts (DRAGIN style)",
        task="Answer the question. It may need facts from the articles linked to the one it is about, "
        "and some arithmetic.",
        answer_format="gives the answer in a few words: a name, a number, or yes or no",
        with_passages="Use the passages below together with your own knowledge.",
        source="DRAGIN",
        exemplars=(
            Exemplar(
                question="How many years after Harvard University was founded was Yale University founded?",
                reasoning="Harvard University was founded in 1636. Yale University was founded in 1701. 1701 minus "
                "1636 is 65.",
                answer="65",
            ),
            Exemplar(
                question="Was the Battle of Hastings fought before Magna Carta was sealed?",
                reasoning="The Battle of Hastings was fought in 1066. Magna Carta was sealed in 1215, later.",
                answer="yes",
            ),
            Exemplar(
                question="Which river flows through the capital of Egypt?",
                reasoning="The capital of Egypt is Cairo. Cairo lies on the Nile.",
                answer="Nile",
            ),
            Exemplar(
                question="How old was Wolfgang Amadeus Mozart when he died?",
                reasoning="Mozart was born on 27 January 1756 and died on 5 December 1791, before his 36th birthday.",
                answer="35",
            ),
            Exemplar(
                question="Which is older, the University of Oxford or the University of Bologna?",
                reasoning="The University of Bologna was founded in 1088. Teaching at the University of Oxford is "
                "known from 1096, later.",
                answer="University of Bologna",
            ),
        ),
    )
)
