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
    code = (
        "import sys; from semoe.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('torch','transformers','prefect') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]")


def test_ls_lists_registered_names(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ("synthetic", "tantivy", "elasticsearch", "no-retrieval", "single-retrieval", "smollm2-135m-instruct"):
        assert name in out


def test_validate_prints_resolved_config_and_hash(tmp_path, capsys):
    args = ["--set", "retrieval.top_k=5", "--set", f"store.path={tmp_path / 'r.duckdb'}"]
    assert main(["validate", str(REPO / "configs" / "demo.yaml"), *args, "--set", f"cache.root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "top_k: 5" in out and "# config hash: " in out and "# preflight passed: run id " in out


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


def test_index_builds_records_and_reuses(tmp_path, capsys):
    """`semoe index` indexes without evaluating (no Prefect imported), records the build once,
    and reuses a complete index."""
    corpus = tmp_path / "psgs.tsv"
    corpus.write_text("id\ttext\ttitle\n" + "".join(f'{i}\t"text {i} about ""bells"""\tT{i}\n' for i in range(1, 51)))
    config = tmp_path / "c.yaml"
    config.write_text(
        f"corpus: {{format: dpr-tsv, path: {corpus}}}\ncache: {{root: {tmp_path / 'cache'}}}\n"
        f"store: {{path: {tmp_path / 'r.duckdb'}}}\n"
    )
    assert main(["index", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("indexed 50 passages in ") and "passages/s" in out and "tantivy index of dpr-tsv:" in out
    [row] = ResultStore(tmp_path / "r.duckdb").query("select passages, skipped_rows, location from indexes")
    assert row["passages"] == 50 and row["skipped_rows"] == 0 and Path(row["location"]).is_dir()
    assert str(row["location"]) in out

    code = (
        f"import sys; from semoe.cli import main; assert main(['index', {str(config)!r}]) == 0; "
        "print(sorted(m for m in ('torch', 'prefect') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("reused the tantivy index of dpr-tsv:") and out.strip().endswith("[]")
    assert ResultStore(tmp_path / "r.duckdb").query("select count(*) n from indexes")[0]["n"] == 1


def test_index_bad_input_is_one_error_line(tmp_path, capsys):
    corpus = tmp_path / "psgs.tsv"
    corpus.write_text("id\ttext\ttitle\n1\tone\tA\n2\ttwo\tB\n1\tagain\tC\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"corpus: {{format: dpr-tsv, path: {corpus}}}\ncache: {{root: {tmp_path / 'cache'}}}\n"
        f"store: {{path: {tmp_path / 'r.duckdb'}}}\n"
    )
    assert main(["index", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # progress lines (bytes read, rate, ETA) may come first; then the one error and nothing else
    assert err[-1] == (
        f"semoe: error: {corpus}: line 4: duplicate passage id '1' (first at line 2); passage ids must be unique"
    )
    assert all(line.startswith("semoe: tantivy index: ") for line in err[:-1]), err
    assert not (tmp_path / "r.duckdb").exists()
    assert main(["index", str(config), "--set", "corpus.format=nope"]) == 2
    assert "unknown corpus format 'nope'" in capsys.readouterr().err
