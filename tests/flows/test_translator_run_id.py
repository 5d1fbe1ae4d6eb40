"""`semoe run` with translator experts: the run id names the translator's checkpoint, which
exists only once built, so the CLI builds it before locking the run. The lock it holds while
the run registers is the run's stored id, on the first run too (not the recipe's provisional id)."""

from __future__ import annotations

import pytest
import yaml

from semoe import cli
from semoe.evaluation.preflight import preflight
from semoe.flows import lifecycle
from semoe.storage.results import ResultStore


@pytest.mark.slow
def test_first_run_locks_the_id_it_is_stored_under(tmp_path, tiny_lm_dir, prefect_api, monkeypatch):
    from semoe.config import load_config
    from tests.support.helpers import seed_augmentations

    config = tmp_path / "dyprag.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "synthetic": {"seed": 3, "n_entities": 8, "n_questions": 2},
                "model": {"spec": tiny_lm_dir},
                "generation": {"max_new_tokens": 4, "few_shot": 0},
                "retrieval": {"top_k": 2},
                "methods": ["dyprag"],
                "experts": {"measure_loss": False, "translator": {"passages": 2, "hidden": 4, "epochs": 1}},
                "augment": {"n_qa": 1},
                "store": {"path": str(tmp_path / "results.duckdb")},
                "cache": {"root": str(tmp_path / "cache")},
                "report": {"write": False},
            }
        )
    )
    seed_augmentations(load_config(str(config), []))
    provisional = preflight(load_config(str(config), []))

    held_by_cli: list[str] = []  # the run ids whose lock the CLI holds, innermost last
    real_lock, real_register = cli.run_lock, lifecycle.register_run
    registered: list[tuple[str, list[str]]] = []

    def recording_lock(store_path, run_id, *args, **kwargs):
        from contextlib import contextmanager

        @contextmanager
        def held():
            with real_lock(store_path, run_id, *args, **kwargs) as path:
                held_by_cli.append(run_id)
                try:
                    yield path
                finally:
                    held_by_cli.pop()

        return held()

    def recording_register(store, run_id, *args, **kwargs):
        registered.append((run_id, list(held_by_cli)))
        return real_register(store, run_id, *args, **kwargs)

    monkeypatch.setattr(cli, "run_lock", recording_lock)
    monkeypatch.setattr(lifecycle, "register_run", recording_register)
    assert cli.main(["run", str(config)]) == 0

    stored = [r["run_id"] for r in ResultStore(tmp_path / "results.duckdb").query("select run_id from runs")]
    assert len(stored) == 1 and stored[0] != provisional  # the provisional id names the translator's recipe
    assert registered == [(stored[0], [provisional, stored[0]])]
    assert preflight(load_config(str(config), [])) == stored[0]  # a rerun locks it from the start
