"""The bad-input matrix: each case is a CLI invocation on a broken input that must end in
exit code 2 with one ``semoe: error:`` line naming the problem, and must leave the rows
already in the results store as they were.

Shared by tests/test_bad_input.py (which asserts it) and scripts/bad_input_matrix.py
(which prints the table of docs/bad-input.md from the same runs).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import yaml

SENTINEL_RUN = "earlier-run"


@dataclass(frozen=True)
class Case:
    id: str
    problem: str  # what is wrong, for the doc's table
    make: Callable[[Path], list[str]]  # writes the inputs under a temp dir, returns the CLI arguments
    expect: tuple[str, ...]  # substrings of the error message
    in_flow: bool = False  # found inside the Prefect flow (needs the Prefect API), not by the CLI's preflight
    real_model: bool = False  # runs a model (the tiny test LM), not just the preflight's file checks
    during: Callable[[Path], ContextManager] = field(default=lambda tmp: contextlib.nullcontext())


def base_config(tmp: Path) -> dict:
    """A config that passes preflight: tiny synthetic data, a stub model directory (preflight
    checks the files; only ``real_model`` cases, given a real one, get as far as loading it)."""
    model = tmp / "model"
    if not model.is_dir():
        model.mkdir()
        (model / "config.json").write_text("{}")
        (model / "model.safetensors").write_bytes(b"")
    return {
        "name": "bad-input",
        "synthetic": {"seed": 1, "n_entities": 8, "n_questions": 4},
        "model": {"spec": str(model)},
        "generation": {"max_new_tokens": 2, "few_shot": 0},
        "methods": ["single-retrieval"],
        "store": {"path": str(tmp / "results.duckdb")},
        "cache": {"root": str(tmp / "cache")},
        "report": {"write": False},  # no case is about the report: its plots cost a second a run
    }


def run_with(tmp: Path, *overrides: str, **sections) -> list[str]:
    """``semoe run`` on the base config updated with ``sections``, plus ``--set`` overrides."""
    data = {**base_config(tmp), **sections}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return ["run", str(path), *[a for o in overrides for a in ("--set", o)]]


def write(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return str(path)


def dataset(tmp: Path, content: str | bytes, name: str = "qa.json") -> list[str]:
    return run_with(tmp, datasets=[{"name": "custom", "path": write(tmp, name, content)}])


def corpus(tmp: Path, content: str | bytes, fmt: str = "jsonl", name: str = "passages.jsonl") -> list[str]:
    return run_with(tmp, corpus={"format": fmt, "path": write(tmp, name, content)})


@contextlib.contextmanager
def store_held_by_another_process(tmp: Path):
    """A second process holds the store open for writing (DuckDB allows one writer)."""
    import semoe.storage.results as results

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import duckdb, time
            con = duckdb.connect({str(tmp / "results.duckdb")!r})
            print("locked", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    wait, results.LOCK_WAIT_S = results.LOCK_WAIT_S, 0.5
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        results.LOCK_WAIT_S = wait
        holder.kill()
        holder.wait()


def without_weights(tmp: Path) -> list[str]:
    args = run_with(tmp)
    (tmp / "model" / "model.safetensors").unlink()
    return args


QA_BELLS = '[{"question": "Which town is famous for glass bells?", "answer": "Quorvanthe"}]'


def corrupt_expert(tmp: Path) -> list[str]:
    """A first run trains the expert of the corpus' one passage (its augmentation is put
    in the cache: the tiny test model cannot write valid QA pairs); then the expert file is
    cut short, as a full disk or a killed copy would leave it. Returns the rerun's arguments."""
    from semoe.cli import main
    from semoe.config import load_config
    from semoe.experts import augment
    from semoe.experts.qa_reply import QAPair
    from semoe.storage.artifacts import ArtifactCache

    text = "Quorvanthe is a river town famous for glass bells and a winter market."
    passages = write(tmp, "one.jsonl", json.dumps({"id": "p1", "title": "Quorvanthe", "text": text}) + "\n")
    args = run_with(
        tmp,
        methods=["prag"],
        retrieval={"top_k": 1},
        augment={"n_qa": 1},
        experts={"measure_loss": False},
        corpus={"format": "jsonl", "path": passages},
        datasets=[{"name": "custom", "path": write(tmp, "qa.json", QA_BELLS)}],
    )
    cfg = load_config(args[1])
    spec, n_qa, n_rw = cfg.augment.augmenting_model(cfg.model.spec), cfg.augment.n_qa, cfg.augment.n_rewrites
    qa = QAPair("Where are glass bells made?", "Quorvanthe", "Glass bells are made in Quorvanthe.")
    record = augment.Augmentation(
        passage_id="p1",
        passage_text_hash=augment.passage_hash(text),
        model=spec,
        prompt_version=augment.PROMPT_VERSION,
        status="ok",
        rewrites=[text] * n_rw,
        qa=[qa] * n_qa,
    )
    ArtifactCache(cfg.cache.root).get_or_build(
        augment.CACHE_KIND,
        augment.augmentation_key(record.passage_text_hash, spec, n_qa, n_rw),
        lambda out: (out / augment.CACHE_FILE).write_text(record.to_json()) and None,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    [expert] = Path(cfg.cache.root).glob("experts/*/expert.safetensors")
    expert.write_bytes(expert.read_bytes()[:200])
    return args


CASES = [
    Case(
        "config-file-missing",
        "config file does not exist",
        lambda t: ["run", str(t / "nope.yaml")],
        ("config file not found", "nope.yaml"),
    ),
    Case(
        "config-not-yaml",
        "config file is not valid YAML",
        lambda t: ["run", write(t, "bad.yaml", "retrieval: [unclosed\n")],
        ("bad.yaml is not valid YAML",),
    ),
    Case(
        "config-value-invalid",
        "a value out of range (`retrieval.top_k=0`)",
        lambda t: run_with(t, "retrieval.top_k=0"),
        ("retrieval.top_k", "greater than or equal to 1"),
    ),
    Case(
        "config-value-wrong-type",
        "a value of the wrong type (`generation.max_new_tokens=lots`)",
        lambda t: run_with(t, "generation.max_new_tokens=lots"),
        ("generation.max_new_tokens",),
    ),
    Case(
        "config-key-unknown",
        "a misspelt key (`retrieval.topk`)",
        lambda t: run_with(t, "retrieval.topk=3"),
        ("retrieval.topk", "Extra inputs are not permitted"),
    ),
    Case(
        "override-malformed",
        "an override without `=`",
        lambda t: run_with(t, "nonsense"),
        ("'nonsense' is not of the form key.path=value",),
    ),
    Case(
        "method-unknown",
        "unknown method name",
        lambda t: run_with(t, methods=["magic"]),
        ("unknown method 'magic'", "registered: "),
    ),
    Case(
        "retriever-unknown",
        "unknown retriever name",
        lambda t: run_with(t, retrieval={"backend": "solr"}),
        ("unknown retriever 'solr'",),
    ),
    Case(
        "dataset-unknown",
        "unknown dataset name",
        lambda t: run_with(t, datasets=[{"name": "nq"}]),
        ("unknown dataset 'nq'",),
    ),
    Case(
        "prompt-template-unknown",
        "unknown prompt template name",
        lambda t: run_with(t, datasets=[{"name": "synthetic", "prompt": "hotpot"}]),
        ("datasets.0.prompt: unknown prompt template 'hotpot'", "registered: "),
    ),
    Case(
        "corpus-format-unknown",
        "unknown corpus format",
        lambda t: run_with(t, corpus={"format": "parquet", "path": "x.parquet"}),
        ("unknown corpus format 'parquet'",),
    ),
    Case(
        "dataset-file-missing",
        "dataset file does not exist",
        lambda t: run_with(t, datasets=[{"name": "custom", "path": str(t / "nope.json")}]),
        ("dataset file not found", "nope.json"),
    ),
    Case(
        "dataset-json-malformed",
        "dataset file is not valid JSON",
        lambda t: dataset(t, '[{"question": "q1", "answer": "a"}, {"question": "q2", "answer": }]'),
        ("qa.json", "invalid JSON at line 1"),
    ),
    Case(
        "dataset-field-missing",
        "a dataset row without a question",
        lambda t: dataset(t, '[{"question": "q1", "answer": "a"}, {"answer": "b"}]'),
        ("qa.json", "index 1", "missing field 'question'"),
    ),
    Case(
        "dataset-duplicate-ids",
        "two questions with the same id",
        lambda t: dataset(
            t, '[{"id": 7, "question": "q1", "answer": "a"}, {"id": 7, "question": "q2", "answer": "b"}]'
        ),
        ("duplicate example id '7'",),
    ),
    Case(
        "dataset-not-utf8",
        "dataset file in Latin-1, not UTF-8",
        lambda t: dataset(t, '[{"question": "Who founded Médéa?", "answer": "x"}]'.encode("latin-1")),
        ("qa.json", "not valid UTF-8"),
    ),
    Case(
        "corpus-file-missing",
        "corpus file does not exist",
        lambda t: run_with(t, corpus={"format": "jsonl", "path": str(t / "nope.jsonl")}),
        ("corpus file not found",),
    ),
    Case(
        "dataset-format-line-malformed",
        "an IRCoT JSONL dataset line without `question_text`",
        lambda t: run_with(
            t,
            datasets=[
                {
                    "name": "ircot",
                    "path": write(t, "dev.jsonl", '{"question_id": "1", "question": "Q?", "answers_objects": []}\n'),
                }
            ],
        ),
        ("dev.jsonl", "line 1", "missing field 'question_text'"),
    ),
    Case(
        "corpus-dataset-field-missing",
        "a `dataset-contexts` corpus (IRCoT) whose context has no `paragraph_text`",
        lambda t: run_with(
            t,
            corpus={
                "format": "dataset-contexts",
                "dataset": "ircot",
                "path": write(t, "contexts.jsonl", '{"contexts": [{"title": "A", "text": "Alpha."}]}\n'),
            },
        ),
        ("contexts.jsonl", "line 1", "contexts[0]: missing field 'paragraph_text'"),
    ),
    Case(
        "elasticsearch-unreachable",
        "Elasticsearch URL where nothing listens",
        lambda t: run_with(t, retrieval={"backend": "elasticsearch", "es_url": "http://127.0.0.1:9"}),
        ("Elasticsearch at http://127.0.0.1:9", "unreachable"),
    ),
    Case(
        "model-dir-missing",
        "model directory does not exist",
        lambda t: run_with(t, model={"spec": str(t / "no-model")}),
        ("model directory not found",),
    ),
    Case(
        "model-weights-missing", "model directory without its weights file", without_weights, ("has no weights file",)
    ),
    Case(
        "store-locked",
        "results store held open by another process",
        lambda t: run_with(t),
        ("locked by another process",),
        during=store_held_by_another_process,
    ),
    Case(
        "store-path-unwritable",
        "results store path under a regular file",
        lambda t: run_with(t, store={"path": write(t, "plain-file", "x") + "/results.duckdb"}),
        ("cannot create the results directory",),
    ),
    Case(
        "cache-path-unwritable",
        "artifact cache path under a regular file",
        lambda t: run_with(t, cache={"root": write(t, "plain-file", "x") + "/cache"}),
        ("cannot create the artifact cache",),
    ),
    Case(
        "sql-store-missing",
        "`semoe sql` on a store that does not exist",
        lambda t: ["sql", "select 1", "--store", str(t / "missing.duckdb")],
        ("no results store at", "`--store PATH`"),
    ),
    Case(
        "corpus-tsv-row-malformed",
        "DPR TSV corpus row with two of three columns",
        lambda t: corpus(
            t, "id\ttext\ttitle\n1\tSome passage text.\tA title\n2\tonly two columns\n", fmt="dpr-tsv", name="psgs.tsv"
        ),
        ("psgs.tsv", "line 3"),
    ),
    Case(
        "corpus-passage-empty",
        "corpus passage with empty text",
        lambda t: corpus(t, '{"id": "a", "title": "A", "text": "Alpha."}\n{"id": "b", "title": "B", "text": "  "}\n'),
        ("passage 'b' has empty text",),
    ),
    Case(
        "corpus-duplicate-ids",
        "two corpus passages with the same id",
        lambda t: corpus(
            t, '{"id": "a", "text": "Alpha."}\n{"id": "b", "text": "Beta."}\n{"id": "a", "text": "Gamma."}\n'
        ),
        ("duplicate passage id 'a'",),
    ),
    Case(
        "corpus-row-malformed-late",
        "a malformed corpus row after the first 1,000 (preflight reads only the head)",
        lambda t: corpus(
            t, "".join(f'{{"id": "{i}", "text": "Passage {i}."}}\n' for i in range(1000)) + '{"id": "late"}\n'
        ),
        ("passages.jsonl", "line 1001", "expected an object with 'text'"),
        in_flow=True,
    ),
    Case(
        "config-not-utf8",
        "config file in Latin-1, not UTF-8",
        lambda t: ["run", write(t, "latin.yaml", "name: M\xe9d\xe9a\n".encode("latin-1"))],
        ("latin.yaml is not valid UTF-8",),
    ),
    Case(
        "adapter-file-corrupt",
        "a cached expert (LoRA safetensors) file cut short",
        corrupt_expert,
        ("expert file", "expert.safetensors is corrupt"),
        in_flow=True,
        real_model=True,
    ),
    Case(
        "corpus-not-utf8",
        "corpus file with a Latin-1 line",
        lambda t: corpus(t, b'{"id": "a", "text": "Alpha."}\n{"id": "b", "text": "M\xe9d\xe9a."}\n'),
        ("passages.jsonl", "line 2", "not valid UTF-8"),
    ),
]


def seed_store(tmp: Path) -> list[dict]:
    """Rows an earlier run left in the store: what no bad input may lose."""
    from semoe.storage.results import ResultStore

    store = ResultStore(tmp / "results.duckdb")
    store.start_run(SENTINEL_RUN, "earlier", "h", "v", "{}")
    store.write_predictions(
        {
            "predictions": [
                {
                    "run_id": SENTINEL_RUN,
                    "dataset": "d",
                    "example_id": "e1",
                    "method": "m",
                    "prediction": "x",
                    "em": 1.0,
                }
            ]
        }
    )
    store.finish_run(SENTINEL_RUN)
    return stored_rows(tmp)


def stored_rows(tmp: Path) -> list[dict]:
    from semoe.storage.results import ResultStore

    return ResultStore(tmp / "results.duckdb", read_only=True).query(
        "select r.run_id, r.status, p.example_id, p.prediction from runs r left join predictions p using (run_id)"
        " where r.run_id = ? or r.status = 'finished' order by all",
        [SENTINEL_RUN],
    )


def prepare(case: Case, tmp: Path, model_dir: str | None = None) -> tuple[list[str], list[dict]]:
    """Write the case's inputs (``model_dir``: the real model of ``real_model`` cases) and
    the rows of an earlier run; returns (CLI arguments, the rows that must survive)."""
    if case.real_model:
        (tmp / "model").symlink_to(model_dir)
    args = case.make(tmp)
    return args, seed_store(tmp)


def run_case(case: Case, tmp: Path, args: list[str]) -> tuple[int, str]:
    """Run the case's CLI call in this process; returns (exit code, stderr)."""
    from semoe.cli import main

    err = io.StringIO()
    with case.during(tmp), contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


def error_message(stderr: str) -> str:
    """The one ``semoe: error:`` message (Prefect's log lines of an in-flow failure may precede it)."""
    assert stderr.count("semoe: error: ") == 1, stderr
    message = stderr.split("semoe: error: ", 1)[1].strip()
    assert "Traceback" not in message, message
    return message
