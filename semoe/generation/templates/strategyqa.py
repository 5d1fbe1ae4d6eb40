"""``strategyqa``: yes/no questions whose reasoning steps are implicit (Geva et al. 2021), with
chain-of-thought exemplars in the style DRAGIN (github.com/oneal2000/DRAGIN) uses for the
dataset: the reply states the facts the question leaves out, then "So the answer is yes/no".
Written anew from well-known facts; "yes" and "no" alternate from the first exemplar on, so
a prompt with few exemplars does not lean towards one of them."""

from __future__ import annotations

from semoe.generation.templates import Exemplar, PromptTemplate, register

register(
    PromptTemplate(
        name="strategyqa",
        description="StrategyQA: yes/no answers, implicit-reasoning CoT exemplars (DRAGIN style)",
        task="Answer the yes/no question. It may need facts that the question does not state.",
        answer_format="says yes or no",
        with_passages="Use the passages below together with your own knowledge.",
        source="DRAGIN",
        exemplars=(
            Exemplar(
                question="Would a week be long enough to watch every episode of Friends?",
                reasoning="Friends has 236 episodes of about 22 minutes each, about 86 hours in all. A week has 168 "
                "hours, more than 86.",
                answer="yes",
            ),
            Exemplar(
                question="Could Julius Caesar have read a book printed on Gutenberg's press?",
                reasoning="Julius Caesar died in 44 BC. Johannes Gutenberg built his printing press around 1440, "
                "nearly fifteen centuries later.",
                answer="no",
            ),
            Exemplar(
                question="Was Mozart alive during the American Revolutionary War?",
                reasoning="Wolfgang Amadeus Mozart lived from 1756 to 1791. The American Revolutionary War was "
                "fought from 1775 to 1783, within his lifetime.",
                answer="yes",
            ),
            Exemplar(
                question="Could a wild penguin be found at the North Pole?",
                reasoning="Wild penguins live almost only in the Southern Hemisphere; the northernmost live on the "
                "Galapagos Islands, at the equator. The North Pole is in the Arctic, far to the north.",
                answer="no",
            ),
            Exemplar(
                question="Is the Pacific Ocean larger than all the land on Earth together?",
                reasoning="The Pacific Ocean covers more than 155 million square kilometres. All the land on Earth "
                "covers about 149 million square kilometres.",
                answer="yes",
            ),
            Exemplar(
                question="Did Albert Einstein ever meet Isaac Newton?",
                reasoning="Isaac Newton died in 1727. Albert Einstein was born in 1879, long after Newton's death.",
                answer="no",
            ),
        ),
    )
)
