"""``generic``: the default for custom data and the synthetic encyclopedia. Its exemplars are
about invented entities, so they teach the format without leaking facts of any dataset; each
carries the passage it is answered from."""

from __future__ import annotations

from semoe.data.schema import Passage
from semoe.generation.templates import Exemplar, PromptTemplate, register

register(
    PromptTemplate(
        name="generic",
        description="short answers; invented single-hop, bridge and comparison exemplars with passages",
        task="Answer the question.",
        answer_format="gives the answer in a few words",
        exemplars=(
            Exemplar(
                question="Where was Teodric Almsvane born?",
                passages=(
                    Passage(
                        "shot-1",
                        "Teodric Almsvane",
                        "Teodric Almsvane (born 1931) is a bridge engineer. Almsvane was born in Kelloway, "
                        "a harbour town in Orvania, and later worked for the Duvessa Company.",
                    ),
                ),
                reasoning="The passage says Teodric Almsvane was born in Kelloway.",
                answer="Kelloway",
            ),
            Exemplar(
                question="Who founded the Brannic Institute?",
                passages=(
                    Passage(
                        "shot-2",
                        "Brannic Institute",
                        "The Brannic Institute is a research university in Solmere. It was founded in 1872 "
                        "by Wilhelmine Oster, a chemist, and is known for its observatory.",
                    ),
                ),
                reasoning="The passage says the Brannic Institute was founded by Wilhelmine Oster.",
                answer="Wilhelmine Oster",
            ),
            Exemplar(
                question="In which country is the birthplace of Idris Camberlo?",
                passages=(
                    Passage(
                        "shot-3",
                        "Idris Camberlo",
                        "Idris Camberlo is a painter born in Fennick. Fennick is a river town in the north "
                        "of Varossia, known for its glassworks.",
                    ),
                ),
                reasoning="Idris Camberlo was born in Fennick, and Fennick is in Varossia.",
                answer="Varossia",
            ),
            Exemplar(
                question="Who was born first, Maren Tolliver or Osgar Pell?",
                passages=(
                    Passage(
                        "shot-4",
                        "Maren Tolliver",
                        "Maren Tolliver (born 1902) was a novelist. Osgar Pell (born 1915) was a composer "
                        "who set several of her poems to music.",
                    ),
                ),
                reasoning="Maren Tolliver was born in 1902 and Osgar Pell in 1915, so Maren Tolliver was born first.",
                answer="Maren Tolliver",
            ),
        ),
    )
)
