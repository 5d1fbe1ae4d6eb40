"""Decode steps of finished rows (issue 13): a row leaves its batch once it is finished (EOS,
its stop criterion), taking its KV-cache and mask rows along, and the answering methods stop a
row once its answer sentence is complete. Neither may change a token of the rows that go on
(greedy, fp32) nor an extracted answer."""

from __future__ import annotations

import dataclasses

import pytest

from semoe.generation.lm import ChatLM
from semoe.generation.methods.standard import answer_complete

N_NEW = 16


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    yield ChatLM(model, tok)
    torch.set_num_threads(threads)


class DecodeSteps:
    """Batch size of every one-token (decode) forward of ``model`` while the block runs."""

    def __init__(self, model):
        self.model, self.sizes = model, []

    def __enter__(self):
        def hook(_module, _args, kwargs):
            if kwargs["input_ids"].shape[1] == 1:
                self.sizes.append(kwargs["input_ids"].shape[0])

        self.handle = self.model.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _rows(lm: ChatLM, chat: bool) -> list[list[int]]:
    """Seven prompts of different lengths; chat-rendered ones share SmolLM2's system prompt."""
    topics = ["glass bells", "river towns", "star charts", "harbour lights", "winter markets", "lighthouses", "abbeys"]
    texts = [f"Tell me about {t}." + " Please." * (i % 3) for i, t in enumerate(topics)]
    prompts = [lm.render([{"role": "user", "content": t}]) if chat else t for t in texts]
    return [lm.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]


def _decode(lm: ChatLM, rows, stop_when=None, on_rows=None) -> list[list[int]]:
    return lm._generate_batch(rows, N_NEW, stop_when, on_rows, share_prefix=True, do_sample=False)


@pytest.mark.parametrize("chat", [True, False], ids=["shared-prefix", "own-prompts"])
def test_rows_stopped_early_leave_the_batch_and_the_rest_keep_their_tokens(tiny, chat):
    rows = _rows(tiny, chat)
    with DecodeSteps(tiny.model) as full_steps:
        full = _decode(tiny, rows)
    assert [len(t) for t in full] == [N_NEW] * len(rows)  # the random model says no EOS here
    assert full_steps.sizes == [len(rows)] * (N_NEW - 1)

    decode = tiny.tokenizer.decode

    def stop(text: str) -> bool:
        return len(text) > 30

    stopped_at = [
        next((j for j in range(1, N_NEW + 1) if stop(decode(t[:j], skip_special_tokens=True))), N_NEW) for t in full
    ]
    assert len(set(stopped_at)) > 1
    seen: list[list[int]] = []
    with DecodeSteps(tiny.model) as steps:
        cut = _decode(tiny, rows, stop, on_rows=seen.append)
    assert cut == [t[:n] for t, n in zip(full, stopped_at)]
    # a finished row is never run again: the decode steps hold exactly the rows still going
    assert sum(steps.sizes) == sum(n - 1 for n in stopped_at)
    assert steps.sizes == sorted(steps.sizes, reverse=True) and steps.sizes[-1] < len(rows)
    # ``on_rows`` hears of every shrink, with the input rows still going
    assert seen[-1] == [r for r, n in enumerate(stopped_at) if n == max(stopped_at)]
    assert all(set(b) < set(a) for a, b in zip(seen, seen[1:]))


def test_rows_that_say_eos_leave_the_batch_and_the_rest_keep_their_tokens(tiny):
    rows = _rows(tiny, chat=True)
    full = _decode(tiny, rows)
    # a token that row 0 says mid-reply and some other rows never say becomes EOS
    eos = next(t for t in full[0][2:-2] if any(t not in other for other in full[1:]))
    config = tiny.model.generation_config
    before = config.eos_token_id
    config.eos_token_id = eos
    try:
        with DecodeSteps(tiny.model) as steps:
            got = _decode(tiny, rows)
    finally:
        config.eos_token_id = before
    want = [t[: t.index(eos) + 1] if eos in t else t for t in full]
    assert got == want and len(got[0]) < N_NEW and any(len(t) == N_NEW for t in got)
    assert sum(steps.sizes) == sum(len(t) - 1 for t in want)


def test_rows_with_their_own_experts_keep_them_when_others_leave(tiny):
    from semoe.experts.inference import generate_with_experts
    from tests.experts.test_expert_inference import make_expert

    conversations = [[{"role": "user", "content": f"Who built tower {i}?" + " Tell me." * (i % 3)}] for i in range(6)]
    experts = [[make_expert(tiny.model, f"x{i}", 2, 70 + i)] * (i % 2) for i in range(len(conversations))]

    def stop(text: str) -> bool:
        return len(text) > 25

    full = generate_with_experts(tiny, conversations, experts, N_NEW, batch_size=3)
    cut = generate_with_experts(tiny, conversations, experts, N_NEW, batch_size=3, stop_when=stop)
    assert len({g.text for g in full}) > 1
    for f, c in zip(full, cut):
        assert f.text.startswith(c.text) and stop(c.text) and c.new_tokens < f.new_tokens
    assert len({c.new_tokens for c in cut}) > 1


@pytest.mark.parametrize(
    "reply, complete",
    [
        ("The answer is Paris.", False),  # a period at the very end may be "Paris.com" or "St." yet
        ("The answer is Paris. The", True),
        ("The answer is Paris.\n", True),
        ("So the answer is St. Louis", False),
        ("So the answer is St. Louis, Missouri. Next", True),
        ("I wonder what the answer is. Hm", False),  # the phrase closes its sentence: no answer yet
        ("I wonder what the answer is. Anyway, the answer is Oslo. So", True),
        ("The answer is", False),
        ("The answer is:\n", False),
        ("Paris is the capital. It is big. ", False),  # no phrase: runs to EOS or the limit
        ("", False),
    ],
)
def test_answer_complete(reply, complete):
    from semoe.generation.answer import extract_answer

    assert answer_complete(reply) is complete
    if complete:  # nothing that could follow changes the extracted answer
        for tail in ("", " x", "\nThe answer is Rome.", ". Also", "'s"):
            assert extract_answer(reply + tail) == extract_answer(reply)


def _answer_without_stop(ctx, examples, method, monkeypatch):
    import semoe.generation.methods.standard as standard
    from semoe.generation import METHODS

    with monkeypatch.context() as m:
        m.setattr(standard, "answer_complete", lambda reply: False)
        return METHODS.get(method)().run(examples, ctx)


def _answer_with_and_without_stop(ctx, examples, method, monkeypatch):
    from semoe.generation import METHODS

    return METHODS.get(method)().run(examples, ctx), _answer_without_stop(ctx, examples, method, monkeypatch)


def _assert_same_answers(stopped, full):
    for s, f in zip(stopped, full, strict=True):
        assert s.prediction == f.prediction
        assert f.raw_output.startswith(s.raw_output)  # only the tail after the answer is cut
        assert s.generated_tokens <= f.generated_tokens


def test_methods_answer_the_same_with_the_stop_on_the_tiny_model(tiny_lm_dir, monkeypatch):
    from semoe.config import SemoeConfig
    from semoe.data import DataContext
    from semoe.data.loading import load_examples
    from semoe.evaluation.answer_chunks import method_context

    cfg = SemoeConfig.model_validate(
        {
            "synthetic": {"seed": 3, "n_entities": 10, "n_questions": 6},
            "model": {"spec": tiny_lm_dir},
            "generation": {"max_new_tokens": 12, "batch_size": 4, "few_shot": 1},
        }
    )
    examples = load_examples(cfg.datasets[0], DataContext.of(cfg))
    ctx = method_context(cfg, cfg.datasets[0].display_name)
    _assert_same_answers(*_answer_with_and_without_stop(ctx, examples, "no-retrieval", monkeypatch))


@pytest.mark.slow
def test_methods_answer_the_same_with_the_stop_on_the_real_model(tmp_path, model_cache_root, monkeypatch):
    """Two of the README demo's questions with the embedded SmolLM2. With the default prompt
    every reply is "The answer is ..." and EOS (nothing to cut); asked to say why after the
    answer, it runs on for question 5 (0-based) with passages ("The answer is not possible to
    determine with certainty. The two individuals ..."): the stop cuts that tail and nothing
    else. Question 6 shares its batch and answers longer, so it goes on after 5 has left; on the
    demo's first 8 questions no other reply was cut (8 cost 2.7 times the CPU of these 2)."""
    from semoe.config import load_config
    from semoe.data import DataContext
    from semoe.data.loading import load_examples
    from semoe.evaluation.answer_chunks import method_context
    from semoe.indexing import build_index, open_retriever
    from tests.support.helpers import DEMO_CONFIG

    index_cfg = load_config(DEMO_CONFIG, [f"cache.root={tmp_path}"])
    model_cfg = load_config(DEMO_CONFIG, [f"cache.root={model_cache_root}"])
    retriever = open_retriever(index_cfg, build_index(index_cfg).corpus_key)
    examples = load_examples(index_cfg.datasets[0], DataContext.of(index_cfg))[5:7]
    ctx = method_context(model_cfg, model_cfg.datasets[0].display_name, retriever)
    ctx.template = dataclasses.replace(ctx.template, task="Answer the question, then say in one more sentence why.")
    saved = {}
    for method in ("no-retrieval", "single-retrieval"):
        stopped, full = _answer_with_and_without_stop(ctx, examples, method, monkeypatch)
        _assert_same_answers(stopped, full)
        saved[method] = sum(f.generated_tokens - s.generated_tokens for s, f in zip(stopped, full))
    assert saved["single-retrieval"] > 0, saved  # the stop did cut a reply
    cut = min(s.generated_tokens for s, f in zip(stopped, full) if s.generated_tokens < f.generated_tokens)
    assert max(s.generated_tokens for s in stopped) > cut  # a row went on after the cut one left the batch
