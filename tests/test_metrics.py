"""Metrics on hand-worked cases (values computed by hand from the SQuAD rules)."""

import pytest

from semoe.metrics import exact_match, f1_score, normalize_answer, recall_at_k


def test_normalisation_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The  Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"


def test_exact_match_uses_any_gold_including_aliases():
    golds = ["Orsolya Vantrecht", "O. Vantrecht"]
    assert exact_match("orsolya vantrecht.", golds) == 1.0
    assert exact_match("O Vantrecht", golds) == 1.0
    assert exact_match("Vantrecht", golds) == 0.0
    assert exact_match("the Marvale", "Marvale") == 1.0


def test_f1_partial_overlap_hand_worked():
    # pred tokens: [born, in, marvale, quellia]; gold: [marvale]; P = 1/4, R = 1 -> F1 = 0.4
    assert f1_score("born in Marvale, Quellia", "Marvale") == pytest.approx(0.4)
    # pred [new, york, city] vs gold [new, york]: P = 2/3, R = 1 -> 0.8
    assert f1_score("New York City", ["New York"]) == pytest.approx(0.8)


def test_f1_takes_max_over_aliases():
    assert f1_score("Vantrecht", ["Orsolya Vantrecht", "Vantrecht"]) == 1.0
    assert f1_score("Vantrecht", ["Orsolya Vantrecht"]) == pytest.approx(2 / 3)


def test_yes_no_rule_gives_zero_unless_identical():
    assert f1_score("yes", "no") == 0.0
    assert f1_score("yes it is", "yes") == 0.0  # normalised prediction differs from the special gold
    assert f1_score("Yes.", "yes") == 1.0
    assert f1_score("no", "no answer") == 0.0
    assert f1_score("noanswer", ["Paris"]) == 0.0


def test_empty_prediction_scores_zero():
    assert exact_match("", ["x"]) == 0.0
    assert f1_score("", ["x"]) == 0.0


def test_recall_at_k_by_ids_then_titles():
    assert recall_at_k(["a", "b"], [], ["a", "c"], []) == 0.5
    assert recall_at_k([], ["Paris", "Rome"], [], ["paris"]) == 1.0
    assert recall_at_k(["a"], ["A"], [], []) is None
