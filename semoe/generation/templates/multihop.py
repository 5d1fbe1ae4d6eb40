"""``2wikimultihopqa`` and ``hotpotqa``: multi-hop chain-of-thought exemplars in the style of
IRCoT's, which DRAGIN (github.com/oneal2000/DRAGIN) and PRAG (github.com/oneal2000/PRAG) use
for these datasets: each reply states one fact per hop, then "So the answer is ...". Written
anew from well-known facts (no exemplar is copied); the question types follow each dataset's
(2Wiki: compositional, inference, comparison and bridge comparison; HotpotQA: bridge and
comparison), yes/no comparisons included, with "yes" and "no" both answered early (the first
exemplars are the ones ``generation.few_shot`` keeps). Exemplars carry no passages: retrieved
passages are shown for the question only, as in DRAGIN."""

from __future__ import annotations

import dataclasses

from semoe.generation.templates import Exemplar, PromptTemplate, register

TWO_WIKI = (
    Exemplar(
        question="When did the director of film Vertigo die?",
        reasoning="The film Vertigo was directed by Alfred Hitchcock. Alfred Hitchcock died on 29 April 1980.",
        answer="29 April 1980",
    ),
    Exemplar(
        question="Are Kyoto and Sapporo located in the same country?",
        reasoning="Kyoto is located in Japan. Sapporo is located in Japan. Thus, they are in the same country.",
        answer="yes",
    ),
    Exemplar(
        question="Do the director of film Rear Window and the director of film La Dolce Vita have the same "
        "nationality?",
        reasoning="Rear Window was directed by Alfred Hitchcock. La Dolce Vita was directed by Federico "
        "Fellini. Alfred Hitchcock was British. Federico Fellini was Italian. Thus, they do not have the "
        "same nationality.",
        answer="no",
    ),
    Exemplar(
        question="Who is the paternal grandfather of Elizabeth II?",
        reasoning="The father of Elizabeth II is George VI. The father of George VI is George V. Thus, the "
        "paternal grandfather of Elizabeth II is George V.",
        answer="George V",
    ),
    Exemplar(
        question="Who was born first, Ludwig van Beethoven or Wolfgang Amadeus Mozart?",
        reasoning="Ludwig van Beethoven was born in December 1770. Wolfgang Amadeus Mozart was born on 27 "
        "January 1756. Thus, Wolfgang Amadeus Mozart was born first.",
        answer="Wolfgang Amadeus Mozart",
    ),
    Exemplar(
        question="Which film has the director who died later, Vertigo or Rashomon?",
        reasoning="Vertigo was directed by Alfred Hitchcock, who died on 29 April 1980. Rashomon was directed "
        "by Akira Kurosawa, who died on 6 September 1998. Thus, the director of Rashomon died later.",
        answer="Rashomon",
    ),
)

HOTPOT = (
    Exemplar(
        question="The Eiffel Tower stands in a city on which river?",
        reasoning="The Eiffel Tower stands in Paris. Paris lies on the river Seine.",
        answer="Seine",
    ),
    Exemplar(
        question="Were Charles Darwin and Abraham Lincoln born on the same day?",
        reasoning="Charles Darwin was born on 12 February 1809. Abraham Lincoln was born on 12 February "
        "1809. Thus, they were born on the same day.",
        answer="yes",
    ),
    Exemplar(
        question="Who was the drummer of the band that released the album Abbey Road?",
        reasoning="Abbey Road was released by the Beatles. The drummer of the Beatles was Ringo Starr.",
        answer="Ringo Starr",
    ),
    Exemplar(
        question="Are the Danube and the Amazon both rivers of Europe?",
        reasoning="The Danube flows through Central and Eastern Europe. The Amazon flows through South "
        "America. Thus, only the Danube is a river of Europe.",
        answer="no",
    ),
    Exemplar(
        question="Which magazine was started first, Time or The New Yorker?",
        reasoning="Time was first published in 1923. The New Yorker was first published in 1925. Thus, Time "
        "was started first.",
        answer="Time",
    ),
    Exemplar(
        question="In what year was the university where Stephen Hawking was Lucasian Professor of Mathematics founded?",
        reasoning="Stephen Hawking was Lucasian Professor of Mathematics at the University of Cambridge. The "
        "University of Cambridge was founded in 1209.",
        answer="1209",
    ),
)

MULTIHOP = register(
    PromptTemplate(
        name="2wikimultihopqa",
        description="2WikiMultihopQA: compositional, inference and comparison CoT exemplars (DRAGIN/PRAG style)",
        task="Answer the question. It may need several facts, found one after the other.",
        answer_format="gives the answer in a few words, or yes or no",
        with_passages="Use the passages below together with your own knowledge.",
        source="DRAGIN / PRAG (IRCoT's exemplar style)",
        exemplars=TWO_WIKI,
    )
)
register(
    dataclasses.replace(
        MULTIHOP,
        name="hotpotqa",
        description="HotpotQA: bridge and comparison CoT exemplars (DRAGIN/PRAG style)",
        exemplars=HOTPOT,
    )
)
