"""The synthetic encyclopedia: deterministic, well-formed, and every question answerable from
its gold passages."""

import os
import re
import subprocess
import sys

import pytest

from semoe.config import ConfigError, CorpusConfig, DatasetConfig, SyntheticConfig, config_from_dict
from semoe.data import CORPORA, DATASETS, DataContext
from semoe.data.encyclopedia import (
    _REAL_WORDS,
    MAX_WORDS,
    MIN_WORDS,
    QUESTION_TYPES,
    build_encyclopedia,
    question_counts,
)

CFG = SyntheticConfig(seed=3, n_entities=40, n_questions=300, extra_passages_per_entity=2)


@pytest.fixture(scope="module")
def enc():
    return build_encyclopedia(CFG)


@pytest.fixture(scope="module")
def passages(enc):
    return {p.id: p for p in enc.passages}


@pytest.fixture(scope="module")
def people(enc):
    return {p.name: p for p in enc.people}


def _entities(enc):
    return [*enc.people, *enc.places, *enc.organisations, *enc.works]


def _snapshot(enc):
    return [p.as_dict() for p in enc.passages], [q.as_dict() for q in enc.questions]


def test_same_seed_same_output_and_different_seed_differs(enc):
    assert _snapshot(build_encyclopedia(CFG)) == _snapshot(enc)
    other = build_encyclopedia(CFG.model_copy(update={"seed": 4}))
    assert [p.text for p in other.passages] != [p.text for p in enc.passages]
    assert [q.question for q in other.questions] != [q.question for q in enc.questions]


def test_output_does_not_depend_on_the_process_hash_seed(enc):
    code = (
        "from semoe.config import SyntheticConfig; from semoe.data.encyclopedia import build_encyclopedia; "
        f"e = build_encyclopedia(SyntheticConfig.model_validate_json({CFG.model_dump_json()!r})); "
        "print(e.passages[-1].text, e.questions[-1].question, e.questions[-1].answers)"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    q = enc.questions[-1]
    assert outputs == {f"{enc.passages[-1].text} {q.question} {q.answers}\n"}


def test_question_and_distractor_settings_leave_the_rest_unchanged(enc):
    fewer_questions = build_encyclopedia(CFG.model_copy(update={"n_questions": 10}))
    assert fewer_questions.passages == enc.passages
    no_extras = build_encyclopedia(CFG.model_copy(update={"extra_passages_per_entity": 0}))
    assert no_extras.passages == enc.passages[: len(no_extras.passages)]
    assert _snapshot(no_extras)[1] == _snapshot(enc)[1]


def test_names_are_unique_invented_and_people_have_two_names(enc):
    names = [e.name for e in _entities(enc)]
    assert len(names) == 4 * CFG.n_entities
    assert len(set(names)) == len(names)
    assert all(len(p.name.split()) == 2 for p in enc.people)
    invented = [w for p in enc.people for w in p.name.split()]
    invented += [w for pl in enc.places for w in (pl.name, pl.country, pl.river)]
    assert all(re.fullmatch(r"[A-Z][a-z]{5,10}", w) for w in invented)
    assert not {w.lower() for w in invented} & _REAL_WORDS


def test_passage_ids_are_stable_strings_and_titles_are_entity_names(enc):
    assert [p.id for p in enc.passages] == [f"syn-{i:06d}" for i in range(len(enc.passages))]
    entities = _entities(enc)
    assert len(enc.passages) == len(entities) * (1 + CFG.extra_passages_per_entity)
    assert [p.title for p in enc.passages[: len(entities)]] == [e.name for e in entities]
    assert all(e.passage_id == p.id for e, p in zip(entities, enc.passages))


def test_passage_lengths_are_in_range(enc):
    lengths = [len(p.text.split()) for p in enc.passages]
    assert MIN_WORDS <= min(lengths) and max(lengths) <= MAX_WORDS


def test_main_passages_state_every_attribute(enc, passages):
    for p in enc.people:
        text = passages[p.passage_id].text
        assert all(v in text for v in (p.name, str(p.birth_year), p.birthplace.name, p.occupation, p.employer.name))
        assert p.birthplace.country not in text  # otherwise "born in which country" would be one hop
        assert p.spouse is None or (p.spouse.name in text and p.spouse.spouse is p)
    for pl in enc.places:
        text = passages[pl.passage_id].text
        assert all(v in text for v in (pl.country, pl.river, str(pl.founded), f"{pl.population:,}"))
    for o in enc.organisations:
        text = passages[o.passage_id].text
        assert all(v in text for v in (o.founder.name, o.headquarters.name, str(o.founded), o.descriptor))
    for w in enc.works:
        text = passages[w.passage_id].text
        assert all(v in text for v in (w.creator.name, str(w.year), w.genre, w.publisher.name))


def test_distractor_passages_name_their_entity_and_state_no_facts(enc):
    entities = _entities(enc)
    names = [e.name for e in entities]
    for p in enc.passages[len(entities) :]:
        assert p.title in p.text
        assert not re.search(r"\d", p.text)
        assert [n for n in names if n in p.text and n not in p.title] == []


def test_gold_ids_exist_and_answers_appear_in_gold_passages(enc, passages):
    for q in enc.questions:
        assert q.gold_passage_ids and all(g in passages for g in q.gold_passage_ids)
        assert len(set(q.gold_passage_ids)) == len(q.gold_passage_ids)
        gold_text = " ".join(passages[g].text for g in q.gold_passage_ids)
        if q.answers[0] in ("yes", "no"):
            assert q.meta["relation"] == "same-birth-country"
        elif q.type == "comparison":
            assert q.answers[0] in q.question and q.answers[0] in q.meta["entities"]
            assert q.answers[0] in gold_text
        else:
            assert q.answers[0] in gold_text, q


def test_bridge_answers_come_from_the_second_hop(enc, passages):
    bridge = [q for q in enc.questions if q.type == "bridge"]
    for q in bridge:
        assert len(q.gold_passage_ids) == 2
        assert q.answers[0] in passages[q.gold_passage_ids[1]].text
        assert q.meta["entities"][0] in passages[q.gold_passage_ids[0]].text


def test_multi_hop_questions_need_at_least_two_passages(enc):
    assert all(len(q.gold_passage_ids) >= 2 for q in enc.questions if q.type != "single-hop")


def test_comparisons_are_correct_and_never_ties(enc, people):
    entities = {e.name: e for e in _entities(enc)}
    year = {
        n: getattr(e, "birth_year", None) or getattr(e, "founded", None) or getattr(e, "year", None)
        for n, e in entities.items()
    }
    for q in (q for q in enc.questions if q.type == "comparison"):
        a, b = q.meta["entities"]
        if q.meta["relation"] == "same-birth-country":
            same = people[a].birthplace.country == people[b].birthplace.country
            assert q.answers == ["yes" if same else "no"]
        else:
            assert year[a] != year[b]
            assert q.answers == [a if year[a] < year[b] else b]


def test_question_mix_types_and_balanced_yes_no(enc):
    by_type = {t: [q for q in enc.questions if q.type == t] for t in QUESTION_TYPES}
    assert {t: len(qs) for t, qs in by_type.items()} == question_counts(CFG.question_mix, CFG.n_questions)
    assert {t: len(qs) for t, qs in by_type.items()} == {"single-hop": 150, "bridge": 90, "comparison": 60}
    yes_no = [q.answers[0] for q in by_type["comparison"] if q.answers[0] in ("yes", "no")]
    assert abs(yes_no.count("yes") - yes_no.count("no")) <= 1 and yes_no
    assert len({q.meta["relation"] for q in enc.questions}) == 18 + 11 + 4  # every relation gets used
    assert len({(q.meta["relation"], *sorted(q.meta["entities"])) for q in enc.questions}) == len(enc.questions)
    assert [q.id for q in enc.questions] == [f"syn-q{i:05d}" for i in range(CFG.n_questions)]


def test_question_counts_follow_the_mix_and_sum_to_n():
    assert question_counts({"single-hop": 1.0}, 7) == {"single-hop": 7, "bridge": 0, "comparison": 0}
    assert sum(question_counts({"single-hop": 1, "bridge": 1, "comparison": 1}, 10).values()) == 10
    with pytest.raises(ValueError):
        question_counts({"single-hop": 0.0}, 5)
    with pytest.raises(ConfigError):
        config_from_dict({"synthetic": {"question_mix": {"multi-hop": 1.0}}})


def test_only_single_hop_questions_when_the_mix_says_so():
    enc = build_encyclopedia(SyntheticConfig(n_entities=8, n_questions=20, question_mix={"single-hop": 1.0}))
    assert {q.type for q in enc.questions} == {"single-hop"}


def test_too_many_questions_for_a_tiny_world_is_a_clear_error():
    with pytest.raises(ValueError, match="distinct single-hop questions"):
        build_encyclopedia(SyntheticConfig(n_entities=8, n_questions=2000, question_mix={"single-hop": 1.0}))


def test_single_hop_gold_passage_names_the_questions_entity(enc, passages):
    """Keyword retrieval can find the evidence: the entity named in the question is in its passage."""
    for q in (q for q in enc.questions if q.type == "single-hop"):
        (name,) = q.meta["entities"]
        assert name in q.question
        assert name == passages[q.gold_passage_ids[0]].title and name in passages[q.gold_passage_ids[0]].text


def test_registered_dataset_and_corpus_share_the_encyclopedia(enc):
    ctx = DataContext(synthetic=CFG)
    examples = DATASETS.get("synthetic")(DatasetConfig(name="synthetic", label="syn-small"), ctx)
    assert [q.question for q in examples] == [q.question for q in enc.questions]
    assert {q.dataset for q in examples} == {"syn-small"}
    examples[0].answers.append("tampered")
    assert DATASETS.get("synthetic")(DatasetConfig(name="synthetic"), ctx)[0].answers == enc.questions[0].answers
    assert list(CORPORA.get("synthetic")(CorpusConfig(format="synthetic"), ctx)) == enc.passages


def test_full_size_builds():
    enc = build_encyclopedia(SyntheticConfig(n_entities=1000, n_questions=500))
    assert len(enc.passages) == 4000 and len(enc.questions) == 500
