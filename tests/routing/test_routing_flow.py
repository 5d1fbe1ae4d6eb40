"""The evaluate_routing flow and its store tables: a tiny random OLMoE (with a real tokenizer, so QA
runs through the pipeline's generation path) and a tiny small MoE LM; rows land in every routing
table, a rerun writes nothing, heatmaps are valid PNGs; migration 3 upgrades a version-2 store."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from semoe.checks import check_config
from semoe.config import ConfigError, PolicySpec, RoutingEvalConfig, SemoeConfig
from semoe.identity import routing_config_hash
from semoe.routing.base import make_policy
from semoe.routing.grid import Cell, grid_cells, plan_cells, split_texts
from semoe.storage.results import ResultStore, migrate
from semoe.storage.schema import MIGRATIONS
from tests.routing.test_routing_adapters import one_thread  # noqa: F401
from tests.routing.test_routing_eval import read_png
from tests.support.helpers import tiny_moe_lm_config

# The shared small MoE LM, 3 layers deep, trained 3 steps (a config dict, as YAML gives it).
TINY_MOE_LM = tiny_moe_lm_config(n_layers=3, max_seq_len=128, batch_size=4, steps=3, warmup_steps=1).model_dump(
    exclude_defaults=True
)
POLICIES = [
    {"name": "topk", "params": {"k": 3}},
    {"name": "bh", "params": {"alpha": 0.2, "p_values": "calibrated"}},
    {"name": "roe", "params": {"samples": 2, "tau": 1.0}},
]


def test_migration_3_upgrades_a_version_2_store(tmp_path):
    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    for version, statements in MIGRATIONS[:2]:
        for stmt in statements:
            con.execute(stmt)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
    con.execute(
        "INSERT INTO runs (run_id, config_hash, code_version, config_json, status) "
        "VALUES ('old', 'h', 'c', '{}', 'finished')"
    )
    assert migrate(con) >= 3
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"routing_runs", "routing_layer_stats", "moe_lm_training", "routing_by_k"} <= tables
    assert con.execute("SELECT run_id FROM runs").fetchall() == [("old",)]
    assert con.execute("SELECT count(*) FROM routing_by_k").fetchone() == (0,)
    con.close()
    assert ResultStore(path).query("SELECT count(*) n FROM moe_lm_training") == [{"n": 0}]


def test_routing_section_validation():
    ok = RoutingEvalConfig(models=["some/hub-id", {"moe_lm": TINY_MOE_LM}], policies=POLICIES)
    assert [m.display_name for m in ok.models] == ["some/hub-id", "moe-lm-gru"]
    assert [make_policy(p).setting() for p in ok.policies] == ["k=3", "alpha=0.2 calibrated", "K=2 tau=1.0"]
    bad = [
        ({"models": [{"spec": "x", "moe_lm": TINY_MOE_LM}]}, "exactly one of"),
        ({"models": ["x", "x"]}, "unique"),
        ({"models": ["x"], "policies": [POLICIES[0], POLICIES[0]]}, "listed twice"),
    ]
    for fields, message in bad:
        with pytest.raises(ValueError, match=message):
            RoutingEvalConfig(**fields)
    checked = [  # what only the registered policies know: checked with the registries (semoe.checks)
        ({"models": ["x"], "policies": [POLICIES[1]], "calibration_texts": 0}, "calibration_texts"),
        ({"models": ["x"], "policies": [{"name": "bh", "params": {"alpha": 3}}]}, r"'bh' \(bh\) params: alpha"),
        ({"models": ["x"], "qa": {"dataset": "nq"}}, "routing.qa.dataset 'nq'"),
    ]
    for fields, message in checked:
        with pytest.raises(ConfigError, match=message):
            check_config(SemoeConfig.model_validate({"routing": fields}))
    assert SemoeConfig().config_hash() == SemoeConfig.model_validate({"routing": None}).config_hash()


def test_grid_plan_and_held_out_split():
    r = RoutingEvalConfig(models=["a", "b"], policies=POLICIES[:2])
    cells = grid_cells(r)
    assert cells[:3] == [Cell(0, None, "analyze"), Cell(0, 0, "patch"), Cell(0, 1, "patch")] and len(cells) == 6
    done = {c.ident(r) for c in cells[:4]}
    assert plan_cells(r, done) == cells[4:]
    texts = [f"t{i}" for i in range(10)]
    split = split_texts(texts, 3, 2)
    assert split.eval == ["t0", "t3", "t6"] and split.calibration == ["t1", "t2"] and len(split.train) == 7
    with pytest.raises(ValueError, match="nothing to train on"):
        split_texts(texts, 10, 2)


def test_cli_route_needs_a_routing_section(tmp_path, capsys):
    from semoe.cli import main

    path = tmp_path / "plain.yaml"
    path.write_text(f"store: {{path: {tmp_path / 'r.duckdb'}}}\n")
    assert main(["route", str(path)]) == 2
    assert "no `routing:` section" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_olmoe_dir(tmp_path_factory, model_cache_root) -> str:
    """A tiny random OLMoE with SmolLM2's tokenizer (chat template included)."""
    from tests.support.helpers import make_tiny_olmoe

    return make_tiny_olmoe(tmp_path_factory.mktemp("tiny-olmoe"))


@pytest.mark.slow
def test_flow_writes_every_routing_table_once(tmp_path, tiny_olmoe_dir, prefect_api):
    from semoe.flows.routing import evaluate_routing

    cfg = SemoeConfig.model_validate(
        {
            "name": "routing-flow-test",
            "synthetic": {"seed": 1, "n_entities": 8, "n_questions": 3},
            "generation": {"max_new_tokens": 4, "few_shot": 0, "batch_size": 4},
            "store": {"path": str(tmp_path / "results.duckdb")},
            "cache": {"root": str(tmp_path / "cache")},
            "routing": {
                "models": [{"spec": tiny_olmoe_dir, "label": "tiny-olmoe"}, {"moe_lm": TINY_MOE_LM}],
                "policies": POLICIES,
                "eval_texts": 3,
                "calibration_texts": 3,
                "max_tokens": 24,
                "decode": {"prompt_tokens": 8, "max_new_tokens": 3},
                "qa": {"dataset": "synthetic", "limit": 2},
            },
        }
    )
    first = evaluate_routing(cfg)
    store = ResultStore(cfg.store.path)
    assert first["produced"] == 8 and len(first["table"]) == 8
    rows = store.query("SELECT * FROM routing_runs ORDER BY model, policy_key, mode")
    assert {(r["model"], r["policy_label"]) for r in rows} == {
        (m, p) for m in ("tiny-olmoe", "moe-lm-gru") for p in ("baseline", "topk", "bh", "roe")
    }
    for r in rows:
        assert r["tokens"] > 0 and r["perplexity"] > 1 and r["decode_tokens_per_s"] > 0 and r["peak_memory_bytes"] > 0
        assert r["qa_dataset"] == "synthetic"
        if r["model"] == "moe-lm-gru":
            assert r["qa_em"] is None and r["qa_note"]
        else:
            assert r["qa_n"] == 2 and 0 <= r["qa_f1"] <= 1 and r["qa_note"] is None
        assert r["k"] == {"topk": 3 if r["policy_label"] == "topk" else 2, "roe": 2, "bh": None}[r["policy"]]
        heatmap = Path(r["heatmap_path"])  # readable, without the cell's key
        assert read_png(heatmap)[0] > 0 and r["policy_key"] not in heatmap.name
        assert heatmap.name.startswith(f"{r['model']}__{r['policy_label']}-") and heatmap.name.endswith(
            f"__{r['mode']}.png"
        )
    bh = [r for r in rows if r["policy"] == "bh"]
    assert all(r["floor_rate"] is not None and r["experts_std"] >= 0 for r in bh)
    layers = store.query("SELECT model, count(*) n FROM routing_layer_stats GROUP BY 1 ORDER BY 1")
    assert layers == [{"model": "moe-lm-gru", "n": 4 * 3}, {"model": "tiny-olmoe", "n": 4 * 3}]
    assert store.query("SELECT count(*) n FROM moe_lm_training")[0]["n"] == TINY_MOE_LM["steps"]
    run = store.query("SELECT status, config_hash, config_json FROM runs WHERE run_id = ?", [first["run_id"]])[0]
    assert (
        run["status"] == "finished"
        and run["config_hash"] == routing_config_hash(cfg)
        and '"routing"' in run["config_json"]
    )

    snapshot = store.query("SELECT * FROM routing_runs ORDER BY ALL")
    second = evaluate_routing(cfg)
    assert second["run_id"] == first["run_id"] and second["produced"] == 0
    assert store.query("SELECT * FROM routing_runs ORDER BY ALL") == snapshot

    # One more policy is a new run that measures only the new cells and copies the others.
    grown = cfg.model_copy(
        update={
            "routing": cfg.routing.model_copy(
                update={"policies": [*cfg.routing.policies, PolicySpec(name="topk", params={"k": 1})]}
            )
        }
    )
    third = evaluate_routing(grown)
    assert third["run_id"] != first["run_id"] and third["produced"] == 2 and third["reused"] == 8
    cols = "model, policy_key, mode, perplexity, experts_per_token, qa_em, heatmap_path, cell_key, computed_in"
    old = store.query(f"SELECT {cols} FROM routing_runs WHERE run_id = ? ORDER BY ALL", [first["run_id"]])
    copied = store.query(
        f"SELECT {cols} FROM routing_runs WHERE run_id = ? AND computed_in = ? ORDER BY ALL",
        [third["run_id"], first["run_id"]],
    )
    assert copied == old
    layer_counts = store.query("SELECT run_id, count(*) n FROM routing_layer_stats GROUP BY 1 ORDER BY n")
    assert [r["n"] for r in layer_counts] == [4 * 3 * 2, 5 * 3 * 2]
    assert (
        store.query("SELECT count(*) n FROM routing_layer_stats")[0]["n"] == 4 * 3 * 2 + 5 * 3 * 2
    )  # copies, no duplicates


def test_roe_answers_like_greedy_generation_at_zero_tau(tiny_olmoe_dir, model_cache_root):
    """QA under RoE goes through the same prompts; with τ = 0 its replies are ChatLM's greedy ones."""
    from semoe.generation.lm import ChatLM
    from semoe.models.loading import load_model
    from semoe.routing.grid import RoEChatLM
    from semoe.routing.policies.roe import RoEPolicy

    model, tokenizer = load_model(tiny_olmoe_dir, model_cache_root)
    conversations = [[{"role": "user", "content": q}] for q in ("Who founded Falvik?", "Where is the Orsa?")]
    greedy = ChatLM(model, tokenizer).generate(conversations, max_new_tokens=5)
    roe = RoEChatLM(model, tokenizer, RoEPolicy(samples=3, tau=0.0)).generate(conversations, max_new_tokens=5)
    assert [g.text for g in roe] == [g.text for g in greedy] and all(g.new_tokens > 0 for g in roe)
    assert [g.prompt_tokens for g in roe] == [g.prompt_tokens for g in greedy]
