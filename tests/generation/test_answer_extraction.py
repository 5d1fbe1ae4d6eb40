import pytest

from semoe.generation.answer import answer_span, extract_answer, sentence_ends, split_sentences
from semoe.metrics import exact_match, f1_score

# (model output, the answer it gives): abbreviations, initials and decimals inside the answer
# and around it must not end the answer sentence.
ANSWERS = [
    # the examples of the issue
    ("The answer is St. Louis, Missouri.", "St. Louis, Missouri"),
    ("So the answer is Mr. Smith.", "Mr. Smith"),
    ("The answer is Mt. Everest.", "Mt. Everest"),
    ("The answer is No. 5.", "No. 5"),
    ("The answer isn't clear.", "The answer isn't clear"),
    # court cases
    ("So the answer is Brown v. Board of Education.", "Brown v. Board of Education"),
    ("The case was decided in 1973. So the answer is Roe v. Wade. It legalized abortion.", "Roe v. Wade"),
    ("The answer is Kramer vs. Kramer.", "Kramer vs. Kramer"),
    ("The answer is Marbury v. Madison (1803).", "Marbury v. Madison (1803)"),
    # saints and streets
    ("The answer is St. Petersburg. It was founded by Peter the Great.", "St. Petersburg"),
    ("The answer is Sault Ste. Marie, Ontario.", "Sault Ste. Marie, Ontario"),
    ("So the answer is Ft. Worth, Texas.", "Ft. Worth, Texas"),
    ("The answer is 221B Baker St. in London.", "221B Baker St. in London"),
    # military ranks and titles
    ("So the answer is Gen. Douglas MacArthur.", "Gen. Douglas MacArthur"),
    ("The answer is Lt. Col. Oliver North.", "Lt. Col. Oliver North"),
    ("The answer is Sgt. Pepper's Lonely Hearts Club Band.", "Sgt. Pepper's Lonely Hearts Club Band"),
    ("The answer is Capt. James Cook. He sailed the Pacific.", "Capt. James Cook"),
    ("So the answer is Dr. Seuss.", "Dr. Seuss"),
    ("The answer is Rev. Jesse Jackson.", "Rev. Jesse Jackson"),
    # initials
    ("The answer is J. K. Rowling.", "J. K. Rowling"),
    ("The answer is W. E. B. Du Bois.", "W. E. B. Du Bois"),
    ("The answer is T.S. Eliot.", "T.S. Eliot"),
    ("The film was directed by Edward L. Cahn. So the answer is Edward L. Cahn.", "Edward L. Cahn"),
    ("The answer is Adm. Chester W. Nimitz.", "Adm. Chester W. Nimitz"),
    ("The answer is World War I. The war ended in 1918.", "World War I"),
    # decimals
    ("The answer is 3.14.", "3.14"),
    ("The answer is $2.5 billion.", "$2.5 billion"),
    ("The answer is 98.6 degrees Fahrenheit. That is normal.", "98.6 degrees Fahrenheit"),
    # D.C., U.S. and words like Jr. that may or may not end a sentence
    ("The answer is Washington, D.C.", "Washington, D.C."),
    ("So the answer is Washington, D.C. It is the capital of the United States.", "Washington, D.C."),
    ("The answer is the U.S. Army.", "the U.S. Army"),
    ("The answer is Martin Luther King Jr. Day.", "Martin Luther King Jr. Day"),
    ("The answer is Sammy Davis Jr. He was an entertainer.", "Sammy Davis Jr."),
    ("The answer is Apple Inc.", "Apple Inc."),
    ("The answer is Jan. 5, 1990.", "Jan. 5, 1990"),
    ("So the answer is c. 1200 AD.", "c. 1200 AD"),
    ("The answer is 5 p.m. on Friday.", "5 p.m. on Friday"),
    ("The answer is Coolie No. 1 (1995 film).", "Coolie No. 1 (1995 film)"),
    # quotes, ellipses, other terminators
    ('The answer is "Quellia".', "Quellia"),
    ('The answer is "The Old Man and the Sea." It won a Pulitzer.', "The Old Man and the Sea"),
    ("The answer is... Paris.", "Paris"),
    ("Is it? The answer is yes! It is.", "yes"),
    ("The answer is no. The two are not the same.", "no"),
]


@pytest.mark.parametrize("text, answer", ANSWERS)
def test_answer_sentence_keeps_abbreviations_initials_and_decimals(text, answer):
    assert extract_answer(text) == answer


def test_extracted_answers_score_against_their_gold():
    golds = {
        "The answer is St. Louis, Missouri.": "St. Louis, Missouri",
        "So the answer is Washington, D.C. It is the capital.": "Washington, D.C.",
        "The answer is J. R. R. Tolkien.": "J. R. R. Tolkien",
        "The answer is Roe v. Wade.": "Roe v. Wade",
    }
    for text, gold in golds.items():
        assert exact_match(extract_answer(text), gold) == 1.0 and f1_score(extract_answer(text), gold) == 1.0


def test_first_answer_phrase_is_used_as_dragin_and_prag_do():
    assert extract_answer("Kelloway is a town. So the answer is Kelloway. It lies in Orvania.") == "Kelloway"
    # a model running on into a question of its own answers that one later
    assert extract_answer("So the answer is Paris.\nQuestion: Where is Lyon?\nSo the answer is France.") == "Paris"
    assert extract_answer("the answer is Paris. Later the answer is Lyon.") == "Paris"
    # a phrase that closes its own sentence introduces no answer
    assert extract_answer("I am not sure what the answer is. So the answer is Lyon.") == "Lyon"


def test_answer_phrase_matches_as_words():
    assert extract_answer("The answer is: Wilhelmine Oster") == "Wilhelmine Oster"
    assert extract_answer("The answer is:\nWilhelmine Oster") == "Wilhelmine Oster"
    assert extract_answer("THE ANSWER IS Orvania.") == "Orvania"
    assert extract_answer("Whether the answer isolates it is unclear. It is Marvale.") == (
        "Whether the answer isolates it is unclear"
    )
    assert answer_span("The answer isn't clear.") is None


def test_without_marker_uses_first_sentence_or_line():
    assert extract_answer("Marvale\nbecause the passage says so") == "Marvale"
    assert extract_answer("Born in 1874. Later moved.") == "Born in 1874"
    assert extract_answer("Dr. Quell Arno. He wrote it.") == "Dr. Quell Arno"


def test_split_sentences():
    text = (
        "Gen. Grant met Lt. Col. Smith in Washington, D.C. They talked about No. 5 and 3.5 million men. "
        'He left at 5 p.m. on Friday... Then it rained! "Why?" asked J. R. Smith.\nNew line'
    )
    assert split_sentences(text) == [
        "Gen. Grant met Lt. Col. Smith in Washington, D.C.",
        "They talked about No. 5 and 3.5 million men.",
        "He left at 5 p.m. on Friday...",
        "Then it rained!",
        '"Why?" asked J. R. Smith.',
        "New line",
    ]
    assert split_sentences("") == [] and split_sentences("\n\n") == []


def test_an_end_that_depends_on_text_not_yet_generated_is_left_open():
    assert sentence_ends("It is Washington, D.C.", final=False) == []
    assert sentence_ends("It is Washington, D.C.") == [len("It is Washington, D.C.")]
    assert sentence_ends("Born in St.", final=False) == [] and sentence_ends("Born in St.") == [11]
    assert sentence_ends("It is D.C. Hel", final=False) == []  # "He" or "Helena"
    assert sentence_ends("It is D.C. He", final=False) == []
    assert sentence_ends("It is D.C. He is", final=False) == [10]
    assert sentence_ends("It is Orvania. ", final=False) == [14]  # a plain word's period needs no next word
    assert answer_span("So the answer is", final=False) is None  # "is" may become "isn't"
    assert answer_span("So the answer is Paris", final=False) == (17, None)
    assert answer_span("So the answer is Paris. It", final=False) == (17, 23)


@pytest.mark.parametrize("text", [t for t, _ in ANSWERS])
def test_ends_found_while_generating_stay_ends(text):
    """Every end found in a prefix (as the triggered methods see the text) is an end of the
    finished text, and the finished text's ends are all found once enough follows them."""
    full = sentence_ends(text)
    for i in range(len(text) + 1):
        partial = sentence_ends(text[:i], final=False)
        assert partial == full[: len(partial)], text[:i]
    assert sentence_ends(text + " Then it rained", final=False) == full
