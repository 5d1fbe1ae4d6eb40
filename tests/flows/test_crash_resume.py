"""Crash and resume: `semoe run` killed with SIGKILL at a random (seeded) point, then run
again, leaves exactly the tables of an uninterrupted run: no lost and no duplicated rows,
the run marked finished. On the weightless dummy model (plumbing only), and on a tiny
random model with a triggered method, whose trigger events must resume as exactly."""

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
from tests.support.helpers import result_tables

TABLES = ["predictions", "retrievals", "trigger_events", "metrics", "runs"]
# model -> (questions, methods); one question per committed chunk. The dummy answers in
# milliseconds: more chunks keep the kill point well before the end of the run.
SETUPS = {
    "dummy": (10, ["no-retrieval", "single-retrieval"]),
    "tiny": (4, ["no-retrieval", "single-retrieval", "dragin"]),
}


def _config(tmp_path, model: str, spec: str, name: str) -> dict:
    n_questions, methods = SETUPS[model]
    return {
        "name": "crash-test",
        "synthetic": {"seed": 7, "n_entities": 10, "n_questions": n_questions},
        "model": {"spec": spec},
        "generation": {"max_new_tokens": 6, "batch_size": 2, "few_shot": 1},
        "methods": methods,
        "store": {"path": str(tmp_path / name / "results.duckdb"), "write_every": 1},
        "cache": {"root": str(tmp_path / name / "cache")},
        "report": {"write": False},
    }


def _tables(path) -> dict[str, list[dict]]:
    return result_tables(path, TABLES)


def _run_and_kill(config_path, after_chunks: int, delay_s: float) -> int:
    """Start `semoe run` in its own process (on this session's Prefect API), SIGKILL it
    `delay_s` after it logged its `after_chunks`-th committed chunk; returns how many it logged."""
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "OMP_NUM_THREADS": "1",
        "SEMOE_PROGRESS_EVERY_S": "0",  # a progress line per committed chunk: the kill point
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "semoe", "run", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    committed, tail = 0, []
    try:
        for line in proc.stdout:
            tail = (tail + [line])[-20:]
            if " answers (" in line and "answers/s" in line:  # "run 3f9c: 2/20 answers (4.8 answers/s, ETA …)"
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


@pytest.mark.long  # a `semoe run` killed and rerun in subprocesses: ~20 s with the dummy model
@pytest.mark.parametrize("model", ["dummy", pytest.param("tiny", marks=[pytest.mark.slow, pytest.mark.real_model])])
@pytest.mark.parametrize("seed", [20261125])
def test_killed_run_resumes_to_the_uninterrupted_tables(seed, model, tmp_path, prefect_api, request):
    from semoe.flows.pipeline import pipeline

    spec = "dummy" if model == "dummy" else request.getfixturevalue("tiny_lm_dir")
    n_chunks = SETUPS[model][0] * len(SETUPS[model][1])
    rng = random.Random(seed)
    after_chunks, delay_s = rng.randint(1, n_chunks // 2), rng.uniform(0.0, 0.5 if model == "tiny" else 0.05)

    reference = SemoeConfig.model_validate(_config(tmp_path, model, spec, "reference"))
    assert pipeline(reference)["produced"] == n_chunks
    expected = _tables(reference.store.path)
    assert expected["retrievals"] and bool(expected["trigger_events"]) == (model == "tiny")

    data = _config(tmp_path, model, spec, "crashed")
    config_path = tmp_path / "crashed.yaml"
    config_path.write_text(yaml.safe_dump(data))
    _run_and_kill(config_path, after_chunks, delay_s)
    killed = _tables(data["store"]["path"])
    assert killed["runs"][0]["run_id"] == expected["runs"][0]["run_id"], "the code changed during the test"
    assert killed["runs"][0]["status"] == "running"  # what a SIGKILL leaves behind
    assert after_chunks <= len(killed["predictions"]) < n_chunks

    resumed = pipeline(SemoeConfig.model_validate(data))
    assert resumed["produced"] == n_chunks - len(killed["predictions"])
    assert _tables(data["store"]["path"]) == expected
