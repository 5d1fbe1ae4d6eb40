from semoe.generation.answer import extract_answer


def test_takes_text_after_last_answer_is_and_cuts_first_sentence():
    assert extract_answer("Kelloway is a town. So the answer is Kelloway. It lies in Orvania.") == "Kelloway"
    assert extract_answer("The answer is: Wilhelmine Oster") == "Wilhelmine Oster"
    assert extract_answer("the answer is X. but the answer is Y.") == "Y"


def test_without_marker_uses_first_sentence_or_line():
    assert extract_answer("Marvale\nbecause the passage says so") == "Marvale"
    assert extract_answer("Born in 1874. Later moved.") == "Born in 1874"


def test_keeps_initials_and_decimals():
    assert extract_answer("The answer is J. R. Tolkien.") == "J. R. Tolkien"
    assert extract_answer("The answer is 3.5 million.") == "3.5 million"
    assert extract_answer('The answer is "Quellia".') == "Quellia"
