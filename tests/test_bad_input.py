"""Bad input through `semoe run`: one clear error naming the problem, exit code 2, and
never a run marked finished with partial rows."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from semoe.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def write_config(tmp_path, tiny_lm_dir):
    def write(**overrides) -> Path:
        data = {
            "name": "bad-input",
            "synthetic": {"seed": 1, "n_entities": 8, "n_questions": 4},
            "model": {"spec": tiny_lm_dir},
            "generation": {"max_new_tokens": 2, "few_shot": 0},
            "methods": ["single-retrieval"],
            "store": {"path": str(tmp_path / "results.duckdb")},
            "cache": {"root": str(tmp_path / "cache")},
        }
        data.update(overrides)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def _no_finished_run(tmp_path) -> bool:
    import duckdb

    db = tmp_path / "results.duckdb"
    if not db.exists():
        return True
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("select count(*) from runs where status = 'finished'").fetchone()[0] == 0
    finally:
        con.close()


def _run(path, capsys) -> str:
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    # Prefect's own log lines may come first when the flow had started; the error is last.
    assert err.count("semoe: error: ") == 1 and "Traceback" not in err.split("semoe: error: ")[1]
    return err.split("semoe: error: ")[1]


def test_missing_dataset_file(write_config, tmp_path, capsys):
    err = _run(write_config(datasets=[{"name": "custom", "path": str(tmp_path / "nope.json")}]), capsys)
    assert "dataset file not found" in err and "nope.json" in err
    assert _no_finished_run(tmp_path)


def test_malformed_json_dataset(write_config, tmp_path, capsys):
    bad = tmp_path / "qa.json"
    bad.write_text('[{"question": "q1", "answer": "a"}, {"question": "q2", "answer": }]')
    err = _run(write_config(datasets=[{"name": "custom", "path": str(bad)}]), capsys)
    assert "qa.json" in err
    assert _no_finished_run(tmp_path)


def test_dataset_row_without_question(write_config, tmp_path, capsys):
    bad = tmp_path / "qa.json"
    bad.write_text('[{"question": "q1", "answer": "a"}, {"answer": "b"}]')
    err = _run(write_config(datasets=[{"name": "custom", "path": str(bad)}]), capsys)
    assert "qa.json" in err and "question" in err


def test_unknown_method_and_retriever(write_config, capsys):
    assert "unknown method 'magic'" in _run(write_config(methods=["magic"]), capsys)
    assert "unknown retriever 'solr'" in _run(write_config(retrieval={"backend": "solr"}), capsys)


def test_invalid_config_value(write_config, capsys):
    assert "retrieval.top_k" in _run(write_config(retrieval={"top_k": 0}), capsys)


def test_unreachable_elasticsearch(write_config, tmp_path, capsys):
    err = _run(write_config(retrieval={"backend": "elasticsearch", "es_url": "http://127.0.0.1:9"}), capsys)
    assert "Elasticsearch at http://127.0.0.1:9" in err and "unreachable" in err
    assert _no_finished_run(tmp_path)


def test_missing_model_directory(write_config, tmp_path, capsys):
    err = _run(write_config(model={"spec": str(tmp_path / "no-model")}), capsys)
    assert "model directory not found" in err


def test_results_store_locked(write_config, tmp_path, capsys, monkeypatch):
    import semoe.storage.results as results

    monkeypatch.setattr(results, "LOCK_WAIT_S", 0.5)
    path = write_config()
    from semoe.storage.results import ResultStore

    ResultStore(tmp_path / "results.duckdb")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, time
            con = duckdb.connect({str(tmp_path / "results.duckdb")!r})
            print("locked", flush=True)
            time.sleep(30)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert "locked by another process" in _run(path, capsys)
    finally:
        holder.kill()
        holder.wait()


def test_malformed_corpus_row_fails_inside_the_flow(write_config, tmp_path):
    # Run as a user does, in its own process: this failure happens inside the Prefect flow,
    # and Prefect's log handlers must not bind to this test's captured streams.
    tsv = tmp_path / "psgs.tsv"
    tsv.write_text("id\ttext\ttitle\n1\tSome passage text.\tA title\n2\tonly two columns\n")
    qa = tmp_path / "qa.json"
    qa.write_text('[{"question": "q1", "answer": "a"}]')
    path = write_config(corpus={"format": "dpr-tsv", "path": str(tsv)}, datasets=[{"name": "custom", "path": str(qa)}])
    done = subprocess.run([sys.executable, "-m", "semoe", "run", str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("semoe: error: ") == 1
    err = done.stderr.split("semoe: error: ")[1]
    assert "Traceback" not in err and "psgs.tsv" in err and "line 3" in err
    assert _no_finished_run(tmp_path)
