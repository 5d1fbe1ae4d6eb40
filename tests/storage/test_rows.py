"""Typed rows (semoe.storage.rows): each row class matches its migrated table; rows are built
only through them; predictions carry their method's expert settings, which the cost view
joins on; trigger events are stored once (their table, not ``predictions.extra``)."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import duckdb
import pytest

import semoe
from semoe.config import SemoeConfig
from semoe.data.schema import Example, Passage
from semoe.evaluation.scoring import ExpertUse, expert_use, to_rows
from semoe.generation.base import MethodOutput, RetrievalStep
from semoe.retrieval.base import Hit
from semoe.storage import rows as rows_module
from semoe.storage.results import ResultStore, StoreError, migrate
from semoe.storage.rows import ROWS, ExpertRow, RetrievalRow, rekeyed
from semoe.storage.schema import MIGRATIONS

SEMOE = Path(semoe.__file__).parent
# DuckDB type of a column → the Python type its row field is annotated with (less "| None").
PY_TYPE = {
    "VARCHAR": "str",
    "JSON": "str",
    "INTEGER": "int",
    "BIGINT": "int",
    "DOUBLE": "float",
    "BOOLEAN": "bool",
    "TIMESTAMP": "datetime",
    "VARCHAR[]": "list[str]",
    "BIGINT[]": "list[int]",
}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(tmp_path_factory.mktemp("rows") / "empty.duckdb"))
    migrate(con)
    yield con
    con.close()


def _tables(con) -> dict[str, list[tuple[str, str, bool]]]:
    """Base table → [(column, data type, nullable)] in column order (schema_version is bookkeeping)."""
    out: dict[str, list] = {}
    for table, column, dtype, nullable in con.execute(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
        " JOIN information_schema.tables USING (table_schema, table_name)"
        " WHERE table_schema = 'main' AND table_type = 'BASE TABLE' AND table_name <> 'schema_version'"
        " ORDER BY table_name, ordinal_position"
    ).fetchall():
        out.setdefault(table, []).append((column, dtype, nullable == "YES"))
    return out


def test_each_table_has_a_row_class_with_its_columns_types_and_order(empty_store):
    tables = _tables(empty_store)
    assert sorted(ROWS) == sorted(tables)
    for table, columns in tables.items():
        cls = ROWS[table]
        assert cls.TABLE == table
        assert cls.columns() == tuple(c for c, _, _ in columns), table
        for f, (column, dtype, nullable) in zip(dataclasses.fields(cls), columns):
            base, optional = f.type.removesuffix(" | None"), f.type.endswith(" | None")
            assert (PY_TYPE[dtype], nullable) == (base, optional), f"{table}.{column}: {dtype} vs {f.type}"


def _primary_keys(con) -> dict[str, set[str]]:
    return {
        t: set(cols)
        for t, cols in con.execute(
            "SELECT table_name, constraint_column_names FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY'"
        ).fetchall()
    }


def _dict_rows(sources: dict[str, str], primary_keys: dict[str, set[str]]) -> list[str]:
    """Dict displays (and dict(...) calls) in ``sources`` (name → Python text) that build a
    table's row by hand: keys all columns of one table, one outside its primary key, and the
    table's first column (run_id, expert_key, ...) among them or, after a spread
    (``{**key, "step": ...}``), at least 4 of its columns. Key-only dicts (constructor kwargs,
    ``rekeyed`` arguments) pass."""
    found = []
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Dict):
                names = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
                spread = None in node.keys
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
                names = [k.arg for k in node.keywords if k.arg]
                spread = len(names) < len(node.keywords) or bool(node.args)
            else:
                continue
            for table, cls in ROWS.items():
                cols = cls.columns()
                row_like = cols[0] in names or (spread and len(names) >= 4)
                if names and set(names) <= set(cols) and set(names) - primary_keys[table] and row_like:
                    found.append(f"{name}:{node.lineno} builds a {table} row as a dict")
    return found


def test_rows_are_built_only_through_the_row_classes(empty_store):
    sources = {
        str(p.relative_to(SEMOE.parent)): p.read_text(encoding="utf-8")
        for p in sorted(SEMOE.rglob("*.py"))
        if p != Path(rows_module.__file__)
    }
    found = _dict_rows(sources, _primary_keys(empty_store))
    assert found == [], "\n".join(found)
    # the check sees the hand-built rows of before
    before = {
        "to_rows": 'key = {"run_id": r, "dataset": d, "example_id": e, "method": m}\n'
        'rows = [{**key, "question": q, "golds": g, "prediction": p, "em": 1.0}]',
        "index": 'row = {"corpus_key": k, "backend": b, "passages": n}',
        "retrievals": 'rows = [{**key, "step": s, "rank": r, "query": q, "passage_id": p}]',
    }
    assert len(_dict_rows(before, _primary_keys(empty_store))) == 3


def test_a_dict_that_is_not_a_row_names_the_table_and_columns():
    row = RetrievalRow(
        run_id="r",
        dataset="d",
        example_id="e",
        method="m",
        step=0,
        rank=1,
        query="q",
        passage_id="p",
        title="t",
        score=1.0,
    ).as_dict()
    assert RetrievalRow.from_dict(row).as_dict() == row
    bad = {k: v for k, v in row.items() if k != "title"} | {"titel": "t"}
    with pytest.raises(
        StoreError, match=r"not a row of retrievals: missing columns \['title'\]; unknown columns \['titel'\]"
    ):
        RetrievalRow.from_dict(bad)
    with pytest.raises(StoreError, match="missing columns"):
        rekeyed("retrievals", [{k: v for k, v in row.items() if k != "score"}], run_id="r2")
    assert rekeyed("retrievals", [row], run_id="r2") == [row | {"run_id": "r2"}]


def test_the_writer_takes_typed_rows_and_refuses_a_row_of_another_table(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    store.start_run("r", "name", "h", "v", "{}")
    expert = ExpertRow(
        expert_key="k",
        passage_id="p",
        path="/x",
        base_model="m",
        rank=2,
        alpha=32.0,
        lr=1e-4,
        epochs=1,
        targets=["up_proj"],
        loss_before=None,
        loss_after=None,
        seconds=None,
        bytes=10,
        sha256=None,
    )
    store.write_rows("experts", [expert])
    assert store.query("SELECT rank, targets, bytes FROM experts") == [{"rank": 2, "targets": ["up_proj"], "bytes": 10}]
    with pytest.raises(StoreError, match=r"ExpertRow \(a row of experts\) given as a row of indexes"):
        store.write_rows("indexes", [expert])
    (run,) = store.query("SELECT * FROM runs")
    assert (run["run_id"], run["name"], run["status"], run["finished_at"]) == ("r", "name", "running", None)


# --------------------------------------------------------------------------- predictions

PASSAGES = [Passage(f"p{i}", f"Title {i}", f"Passage {i}.") for i in range(3)]
EVENTS = [
    {"step": 0, "token_index": 3, "token": "Kelloway", "score": 2.5, "query": "q one", "passage_ids": ["p0", "p1"]},
    {"step": 1, "token_index": 9, "token": "", "score": None, "query": "q two", "passage_ids": []},
]


def _examples() -> list[Example]:
    return [Example(f"q{i}", f"Question {i}?", [f"answer {i}"], "synthetic") for i in range(2)]


def _output(experts_s: float = 0.0, events: list | None = None) -> MethodOutput:
    latency = {"retrieve": 0.01, "generate": 0.1} | ({"experts": experts_s} if experts_s else {})
    extra = {"tokens": 4, "prefill_tokens": 9} | (
        {"trigger_events": events, "hallucination_events": len(events), "sentences": 2} if events is not None else {}
    )
    return MethodOutput(
        prediction="answer 0",
        raw_output="So the answer is answer 0.",
        generation_count=1,
        retrievals=[RetrievalStep(0, "Question?", [Hit(PASSAGES[r], 1.0, r + 1) for r in range(2)])],
        prompt_tokens=20,
        generated_tokens=4,
        latency=latency,
        extra=extra,
    )


def test_trigger_events_are_stored_once_in_their_table(tmp_path):
    examples = _examples()
    tables = to_rows("r", "synthetic", "dragin", examples, [_output(events=EVENTS), _output(events=[])], experts=None)
    first = tables["predictions"][0]
    assert json.loads(first["extra"]) == {"tokens": 4, "prefill_tokens": 9}  # counters are columns, events a table
    assert (first["hallucination_events"], first["sentences"]) == (2, 2)
    assert [(e["example_id"], e["step"], e["token"], e["passage_ids"]) for e in tables["trigger_events"]] == [
        ("q0", 0, "Kelloway", ["p0", "p1"]),
        ("q0", 1, "", []),
    ]
    store = ResultStore(tmp_path / "r.duckdb")
    store.start_run("r", "t", "h", "v", "{}")
    store.write_predictions(tables)
    assert store.query("SELECT count(*) AS n FROM predictions WHERE extra LIKE '%trigger_events%'") == [{"n": 0}]
    stored = store.query("SELECT example_id, step, token_index, score, query FROM trigger_events ORDER BY ALL")
    assert [tuple(r.values()) for r in stored] == [("q0", 0, 3, 2.5, "q one"), ("q0", 1, 9, None, "q two")]


def _cfg(tmp_path) -> SemoeConfig:
    return SemoeConfig.model_validate(
        {
            "name": "ranks",
            "store": {"path": str(tmp_path / "r.duckdb")},
            "methods": [
                "no-retrieval",
                "prag",
                {"name": "prag", "label": "prag-r4", "params": {"experts": {"rank": 4}}},
                {"name": "semoe", "params": {"experts": {"targets": ["down_proj"]}}},
            ],
        }
    )


def test_expert_use_is_each_methods_resolved_expert_settings(tmp_path):
    cfg = _cfg(tmp_path)
    spec, shared = cfg.model.spec, ("down_proj", "gate_proj", "up_proj")  # the default targets, as resolved
    assert expert_use(cfg, "no-retrieval") is None
    assert expert_use(cfg, "prag") == ExpertUse(spec, cfg.experts.rank, shared)
    assert expert_use(cfg, "prag-r4") == ExpertUse(spec, 4, shared)
    assert expert_use(cfg, "semoe") == ExpertUse(spec, cfg.experts.rank, ("down_proj",))
    rows = to_rows("r", "d", "prag-r4", _examples(), [_output(0.05)] * 2, experts=expert_use(cfg, "prag-r4"))[
        "predictions"
    ]
    assert {(r["base_model"], r["expert_rank"], tuple(r["expert_targets"])) for r in rows} == {(spec, 4, shared)}
    (plain,) = to_rows("r", "d", "no-retrieval", _examples()[:1], [_output()], experts=None)["predictions"]
    assert (plain["base_model"], plain["expert_rank"], plain["expert_targets"]) == (None, None, None)
    with pytest.raises(TypeError, match="experts"):
        to_rows("r", "d", "prag", _examples(), [_output(0.05)] * 2)  # no silent NULL settings


def _expert(cfg, passage_id: str, rank: int, targets: list[str], nbytes: int) -> ExpertRow:
    return ExpertRow(
        expert_key=f"{passage_id}-{rank}-{'-'.join(targets)}",
        passage_id=passage_id,
        path="/x",
        base_model=cfg.model.spec,
        rank=rank,
        alpha=32.0,
        lr=3e-4,
        epochs=1,
        targets=targets,
        loss_before=None,
        loss_after=None,
        seconds=None,
        bytes=nbytes,
        sha256=None,
    )


def test_cost_view_sizes_each_methods_experts_by_its_own_rank(tmp_path):
    """One run, two ranks: each method's experts are the ones of its rank (p0, p1 retrieved)."""
    cfg = _cfg(tmp_path)
    store = ResultStore(cfg.store.path)
    store.start_run("r", cfg.name, cfg.config_hash(), "v", json.dumps(cfg.model_dump(mode="json")))
    for label in ("no-retrieval", "prag", "prag-r4", "semoe"):
        spent = 0.0 if label == "no-retrieval" else 0.05
        store.write_predictions(
            to_rows("r", "d", label, _examples(), [_output(spent)] * 2, experts=expert_use(cfg, label))
        )
    targets = ["down_proj", "gate_proj", "up_proj"]  # resolved params sort them: so the experts table has them
    store.write_rows(
        "experts",
        [
            _expert(cfg, "p0", 2, targets, 100),
            _expert(cfg, "p1", 2, targets, 200),
            _expert(cfg, "p2", 2, targets, 999),
            _expert(cfg, "p0", 4, targets, 1000),
            _expert(cfg, "p1", 4, targets, 2000),
            _expert(cfg, "p0", 2, ["down_proj"], 10),
            _expert(cfg, "p1", 2, ["down_proj"], 20),
        ],
    )
    cost = {r["method"]: r for r in store.query("SELECT * FROM cost_by_method WHERE run_id = 'r'")}
    got = {m: (r["experts_used"], r["expert_bytes"], r["expert_bytes_per_question"]) for m, r in cost.items()}
    assert got == {
        "no-retrieval": (0, 0, 0.0),
        "prag": (2, 300, 300.0),
        "prag-r4": (2, 3000, 3000.0),
        "semoe": (2, 30, 30.0),
    }


def test_migration_6_fills_old_predictions_and_drops_the_copies_in_extra(tmp_path, monkeypatch):
    """A store written before version 6: its predictions get the settings their run's config
    gave the method (bare method names and per-method params alike) and lose the trigger
    events and counters that extra duplicated."""
    import semoe.storage.results as results

    path = tmp_path / "old.duckdb"
    monkeypatch.setattr(results, "MIGRATIONS", [m for m in MIGRATIONS if m[0] < 6])
    old = ResultStore(path)
    config = {
        "model": {"spec": "base"},
        "experts": {"rank": 2, "targets": ["up_proj", "down_proj"]},
        "methods": ["prag", "dragin", {"name": "prag", "label": "prag-r4", "params": {"experts": {"rank": 4}}}],
    }
    old.start_run("r", "t", "h", "v", json.dumps(config))
    extra = json.dumps({"trigger_events": EVENTS, "hallucination_events": 2, "sentences": 2, "tokens": 4})
    columns = [r["name"] for r in old.query("SELECT name FROM pragma_table_info('predictions')")]  # version 5's
    with old.connect() as con:
        for method, experts_s in (("prag", 0.05), ("prag-r4", 0.05), ("dragin", 0.0)):
            values = dict.fromkeys(columns) | {
                "run_id": "r",
                "dataset": "d",
                "example_id": "q0",
                "method": method,
                "latency_experts_s": experts_s,
                "extra": extra,
            }
            con.execute(
                f"INSERT INTO predictions ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
            )
    old.write_rows(
        "retrievals",
        [
            RetrievalRow(
                run_id="r",
                dataset="d",
                example_id="q0",
                method=m,
                step=0,
                rank=1,
                query="q",
                passage_id="p0",
                title="t",
                score=1.0,
            )
            for m in ("prag", "prag-r4", "dragin")
        ],
    )
    old.write_rows(
        "experts",
        [  # as the provider wrote them: targets sorted
            ExpertRow(
                expert_key=f"k{rank}",
                passage_id="p0",
                path="/x",
                base_model="base",
                rank=rank,
                alpha=32.0,
                lr=3e-4,
                epochs=1,
                targets=["down_proj", "up_proj"],
                loss_before=None,
                loss_after=None,
                seconds=None,
                bytes=nbytes,
                sha256=None,
            )
            for rank, nbytes in ((2, 100), (4, 400))
        ],
    )
    monkeypatch.undo()
    store = ResultStore(path)
    got = store.query("SELECT method, base_model, expert_rank, expert_targets, extra FROM predictions ORDER BY method")
    assert [(r["method"], r["base_model"], r["expert_rank"], r["expert_targets"]) for r in got] == [
        ("dragin", None, None, None),
        ("prag", "base", 2, ["up_proj", "down_proj"]),
        ("prag-r4", "base", 4, ["up_proj", "down_proj"]),
    ]
    assert all(json.loads(r["extra"]) == {"tokens": 4} for r in got)
    cost = store.query("SELECT method, expert_bytes FROM cost_by_method ORDER BY method")
    assert [(r["method"], r["expert_bytes"]) for r in cost] == [("dragin", 0), ("prag", 100), ("prag-r4", 400)]
