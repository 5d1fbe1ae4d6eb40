"""Crash and resume: `semoe run` killed with SIGKILL at a random (seeded) point, then run
again, leaves exactly the tables of an uninterrupted run: no lost and no duplicated rows,
the run marked finished."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

from semoe.config import SemoeConfig

from helpers import result_tables  # noqa: E402

pytestmark = pytest.mark.slow

TABLES = ["predictions", "retrievals", "trigger_events", "metrics", "runs"]
N_CHUNKS = 12  # 4 questions x 3 methods, one question per committed chunk


def _config(tmp_path, tiny_lm_dir, name: str) -> dict:
    return {
        "name": "crash-test",
        "synthetic": {"seed": 7, "n_entities": 10, "n_questions": 4},
        "model": {"spec": tiny_lm_dir},
        "generation": {"max_new_tokens": 6, "batch_size": 2, "few_shot": 1},
        "methods": ["no-retrieval", "single-retrieval", "dragin"],
        "store": {"path": str(tmp_path / name / "results.duckdb"), "write_every": 1},
        "cache": {"root": str(tmp_path / name / "cache")},
    }


def _tables(path) -> dict[str, list[dict]]:
    return result_tables(path, TABLES)


def _run_and_kill(config_path, after_chunks: int, delay_s: float) -> int:
    """Start `semoe run` in its own process (on this session's Prefect API), SIGKILL it
    `delay_s` after it logged its `after_chunks`-th committed chunk; returns how many it logged."""
    from prefect.settings import get_current_settings

    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "semoe", "run", str(config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    committed, tail = 0, []
    try:
        for line in proc.stdout:
            tail = (tail + [line])[-20:]
            if "committed " in line and " answers" in line:
                committed += 1
                if committed == after_chunks:
                    time.sleep(delay_s)
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert committed == after_chunks, "run ended before the kill point:\n" + "".join(tail)
    assert proc.returncode == -signal.SIGKILL
    return committed


@pytest.mark.parametrize("seed", [20261125])
def test_killed_run_resumes_to_the_uninterrupted_tables(seed, tmp_path, tiny_lm_dir, prefect_api):
    from semoe.flows.pipeline import pipeline

    rng = random.Random(seed)
    after_chunks, delay_s = rng.randint(1, N_CHUNKS - 3), rng.uniform(0.0, 0.5)

    reference = SemoeConfig.model_validate(_config(tmp_path, tiny_lm_dir, "reference"))
    assert pipeline(reference)["produced"] == N_CHUNKS
    expected = _tables(reference.store.path)
    assert expected["retrievals"] and expected["trigger_events"]

    data = _config(tmp_path, tiny_lm_dir, "crashed")
    config_path = tmp_path / "crashed.yaml"
    config_path.write_text(yaml.safe_dump(data))
    _run_and_kill(config_path, after_chunks, delay_s)
    killed = _tables(data["store"]["path"])
    assert killed["runs"][0]["run_id"] == expected["runs"][0]["run_id"], "the code changed during the test"
    assert killed["runs"][0]["status"] == "running"  # what a SIGKILL leaves behind
    assert after_chunks <= len(killed["predictions"]) < N_CHUNKS

    resumed = pipeline(SemoeConfig.model_validate(data))
    assert resumed["produced"] == N_CHUNKS - len(killed["predictions"])
    assert _tables(data["store"]["path"]) == expected
