"""The CLI: instant help, registry listing, validation, read-only SQL (its bad-input errors are
in the matrix of tests/test_bad_input.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from semoe.cli import main
from semoe.storage.results import ResultStore

REPO = Path(__file__).resolve().parents[1]


def test_help_does_not_import_torch_or_prefect():
    code = "import sys; from semoe.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n" \
           "print(sorted(m for m in ('torch','transformers','prefect') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]")


def test_ls_lists_registered_names(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ("synthetic", "tantivy", "elasticsearch", "no-retrieval", "single-retrieval", "smollm2-135m-instruct"):
        assert name in out


def test_validate_prints_resolved_config_and_hash(capsys):
    assert main(["validate", str(REPO / "configs" / "demo.yaml"), "--set", "retrieval.top_k=5"]) == 0
    out = capsys.readouterr().out
    assert "top_k: 5" in out and "# config hash: " in out


def test_sql_is_read_only_and_formats(tmp_path, capsys):
    path = tmp_path / "r.duckdb"
    store = ResultStore(path)
    store.start_run("r1", "t", "h", "v", "{}")
    assert main(["sql", "select run_id, status from runs", "--store", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"run_id": "r1", "status": "running"}]
    assert main(["sql", "select run_id, status from runs", "--store", str(path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["run_id,status", "r1,running"]
    assert main(["sql", "delete from runs", "--store", str(path)]) == 2
    assert "read-only" in capsys.readouterr().err.lower()
    assert store.query("select count(*) n from runs")[0]["n"] == 1
