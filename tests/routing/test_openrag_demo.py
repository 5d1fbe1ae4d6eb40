"""The CPU demo of the Open-RAG evaluation (configs/openrag-cpu-demo.yaml) end to end on a tiny
random Open-RAG (tests.support.openrag; built here, nothing downloaded): `semoe run`'s QA with
reflection-token adaptive retrieval over Open-RAG JSONL questions and their own contexts, then
the routing flow (greedy vs RoE K 4/8 with τ (0, 0.01), 0.05 and 0; top-k 4 and BH on the adapter
MoE), rows in DuckDB, heatmaps and the report. Plumbing, not quality: the model is random."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from semoe.config import load_config
from semoe.generation.methods.reflection import ReflectionRetrieval
from semoe.storage.results import ResultStore

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "openrag-cpu-demo.yaml"
CONTEXT = 1024  # scripts/make_tiny_openrag.py's default: Open-RAG's prompt and two passages fit


@pytest.fixture(scope="module")
def tiny_openrag_dir(tmp_path_factory) -> str:
    from tests.support.openrag import make_tiny_openrag

    return make_tiny_openrag(tmp_path_factory.mktemp("tiny-openrag"), max_position_embeddings=CONTEXT)


def _demo_config(tmp_path: Path, model_dir: str):
    return load_config(
        CONFIG,
        [
            f"model.spec={model_dir}",
            f"routing.models.0.spec={model_dir}",
            f"store.path={tmp_path / 'demo.duckdb'}",
            f"cache.root={tmp_path / 'cache'}",
            "report.write=false",  # the routing run's report is written and checked below
        ],
    )


class AnswerLog:
    """Every call of the reflection method: the kind of LM it ran with and its outputs, in call
    order (the QA run first, then the routing cells in grid order, one call per cell)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, list]] = []
        run = ReflectionRetrieval.run

        def logged(method, examples, ctx):
            outputs = run(method, examples, ctx)
            self.calls.append((type(ctx.lm).__name__, dict(zip((ex.id for ex in examples), outputs, strict=True))))
            return outputs

        monkeypatch.setattr(ReflectionRetrieval, "run", logged)


def _answers(outputs: dict) -> dict:
    return {i: (o.prediction, o.extra["retrieval"]["decision"], o.error) for i, o in outputs.items()}


@pytest.mark.slow
def test_openrag_cpu_demo_end_to_end(tmp_path, tiny_openrag_dir, prefect_api, monkeypatch):
    import torch

    from semoe.flows.pipeline import pipeline
    from semoe.flows.routing import evaluate_routing
    from semoe.reporting import write_run_report
    from semoe.routing.grid import grid_cells

    torch.set_num_threads(1)
    cfg = _demo_config(tmp_path, tiny_openrag_dir)
    log = AnswerLog(monkeypatch)

    # --- `semoe run`: reflection over each question's own contexts, no index
    qa = pipeline(cfg)
    store = ResultStore(cfg.store.path)
    preds = store.query("SELECT * FROM predictions WHERE run_id = ? ORDER BY example_id", [qa["run_id"]])
    n = len(preds)
    assert qa["produced"] == n == 6 and all(p["error"] is None for p in preds)
    assert not (Path(cfg.cache.root) / "indexes").exists()
    events = store.query("SELECT * FROM trigger_events WHERE run_id = ?", [qa["run_id"]])
    retrieved = {p["example_id"] for p in preds if p["retrieval_count"]}
    assert {e["example_id"] for e in events} == retrieved and len(events) == len(retrieved)
    assert 0 < len(retrieved) < n, "the demo's threshold should split the questions (both branches run)"
    for e in events:
        assert e["token"] == "[Retrieval]" and e["score"] > cfg.methods[0].params["threshold"]
    cited = store.query("SELECT example_id, passage_id FROM retrievals WHERE run_id = ?", [qa["run_id"]])
    assert {c["example_id"] for c in cited} == retrieved  # passages from the questions' own contexts

    # --- the routing grid on the adapter MoE, QA per cell with the same method
    result = evaluate_routing(cfg)
    routing = cfg.routing
    cells = grid_cells(routing)
    rows = store.query("SELECT * FROM routing_runs WHERE run_id = ?", [result["run_id"]])
    assert result["produced"] == len(cells) == len(rows) == 1 + len(routing.policies)
    by_label = {r["policy_label"]: r for r in rows}
    assert set(by_label) == {"baseline", "roe", "roe-tau0", "topk", "bh"}  # roe: four settings share a label
    assert len({(r["policy_key"], r["mode"]) for r in rows}) == len(rows)
    for r in rows:
        assert r["qa_n"] == n and r["qa_method"] == "open-rag-adaptive"
        assert 0 <= r["qa_em"] <= r["qa_f1"] <= 1
        assert 0 <= r["qa_retrieval_rate"] <= 1 and r["qa_tokens_per_s"] > 0
        assert math.isfinite(r["perplexity"]) and r["peak_memory_bytes"] > 0
    layers = store.query(
        "SELECT policy_key, mode, count(*) AS n FROM routing_layer_stats WHERE run_id = ? GROUP BY ALL",
        [result["run_id"]],
    )
    assert len(layers) == len(rows) and {x["n"] for x in layers} == {4}  # every cell, every layer
    heatmaps = sorted(Path(result["heatmaps"]).rglob("*.png"))
    assert len(heatmaps) == len(rows)
    # The model's own routing is top-2; top-k 4 routes four adapters per token.
    assert by_label["baseline"]["experts_per_token"] == pytest.approx(2.0)
    assert by_label["topk"]["k"] == 4 and by_label["topk"]["experts_per_token"] == pytest.approx(4.0)

    # --- answers: the QA run and each routing cell, as the method returned them
    assert [kind for kind, _ in log.calls] == ["ChatLM"] + [
        "RoEChatLM" if c.spec(routing).name == "roe" else "ChatLM" for c in cells
    ]
    qa_answers, cell_answers = log.calls[0][1], dict(zip(cells, (outputs for _, outputs in log.calls[1:])))
    assert {p["example_id"]: (p["prediction"], bool(p["retrieval_count"])) for p in preds} == {
        i: (o.prediction, o.extra["retrieval"]["decision"]) for i, o in qa_answers.items()
    }
    baseline = next(c for c in cells if c.policy is None)
    tau0 = next(c for c in cells if c.spec(routing).display_name == "roe-tau0")
    # The baseline cell observes the model's own routing: the QA run's answers and decisions.
    assert _answers(cell_answers[baseline]) == _answers(qa_answers)
    # RoE with τ = 0 everywhere is greedy decoding: the same answers and retrieval decisions.
    assert _answers(cell_answers[tau0]) == _answers(cell_answers[baseline])
    # Each cell's retrieval rate is the fraction of its adaptive decisions to retrieve; the
    # baseline's is what the QA run recorded as trigger events.
    for cell, outputs in cell_answers.items():
        model, key, mode = cell.ident(routing)
        row = next(r for r in rows if (r["policy_key"], r["mode"]) == (key, mode))
        decisions = [o.extra["retrieval"]["decision"] for o in outputs.values()]
        assert row["qa_retrieval_rate"] == pytest.approx(sum(decisions) / n)
    assert by_label["baseline"]["qa_retrieval_rate"] == pytest.approx(len(retrieved) / n)
    em = store.query("SELECT avg(em) AS em, avg(f1) AS f1 FROM predictions WHERE run_id = ?", [qa["run_id"]])[0]
    assert (by_label["baseline"]["qa_em"], by_label["baseline"]["qa_f1"]) == pytest.approx((em["em"], em["f1"]))

    # --- the report, built from those rows
    report = write_run_report(cfg.store.path, result["run_id"], tmp_path / "report")
    md = report.paths["md"].read_text(encoding="utf-8")
    for r in rows:  # the report's routing table has every cell
        assert f"| {r['model']} | {r['policy']} | {r['setting']} | {r['mode']} |" in md
    assert [p.name for p in report.report.plots] and all(report.paths[p.name].is_file() for p in report.report.plots)

    # --- a rerun measures nothing again
    again = evaluate_routing(cfg)
    assert again["run_id"] == result["run_id"] and again["produced"] == 0


def _ls_sections(out: str) -> dict[str, set[str]]:
    """`semoe ls` output as {section heading: the names listed under it}."""
    sections: dict[str, set[str]] = {}
    for line in out.splitlines():
        if line and not line.startswith(" "):
            heading = sections.setdefault(line.rstrip(":"), set())
        elif line.strip():
            heading.add(line.split()[0])
    return sections


def test_ls_lists_the_open_rag_family_and_the_reflection_method(capsys):
    from semoe.cli import main

    assert main(["ls"]) == 0
    sections = _ls_sections(capsys.readouterr().out)
    assert "reflection" in sections["methods"]
    assert "openrag" in sections["datasets"]
    assert "openrag" in sections["model families (routing)"]


def test_demo_config_passes_preflight_without_an_index(tmp_path, tiny_openrag_dir, capsys):
    from semoe.cli import main

    sets = [f"model.spec={tiny_openrag_dir}", f"routing.models.0.spec={tiny_openrag_dir}"]
    sets += [f"store.path={tmp_path / 'demo.duckdb'}", f"cache.root={tmp_path / 'cache'}"]
    assert main(["validate", str(CONFIG), *(a for s in sets for a in ("--set", s))]) == 0
    assert "# preflight passed: run id " in capsys.readouterr().out
    assert not (tmp_path / "cache" / "indexes").exists()
