"""Done-when check of the deployments: a throwaway Prefect server, the work pools,
``prefect deploy --all`` from deployments/prefect.yaml, a process worker, and one scheduled
run of ``pipeline/pipeline-nightly`` executed through that worker until it is Completed.

The run gets a tiny config (one method, a few questions, results in the temp dir, the GPU
limit forced on so the worker exercises it on CPU); everything else is what a GPU box does.
Nothing outside the temp dir is written except the artifact cache (the converted model is
reused from it). Usage: ``.venv/bin/python scripts/check_deployments.py [--keep-dir]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOLS = {
    "semoe-gpu": ["--type", "process"],
    "semoe-k8s": [
        "--type",
        "kubernetes",
        "--base-job-template",
        str(REPO / "deployments" / "k8s-gpu-job-template.json"),
    ],
}
DEPLOYMENT = "pipeline/pipeline-nightly"
WORKER_NAME = "check-box"


def tiny_config(tmp: Path) -> dict:
    return {
        "name": "deploy-check",
        "synthetic": {"seed": 1, "n_entities": 8, "n_questions": 4},
        "generation": {"max_new_tokens": 8, "batch_size": 4, "few_shot": 1},
        "methods": ["no-retrieval"],
        "store": {"path": str(tmp / "results.duckdb"), "write_every": 2},
        "gpu": {"limit": "on", "worker": WORKER_NAME},
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    tmp: Path
    env: dict
    api_url: str
    ui_url: str
    procs: list = field(default_factory=list)

    def prefect(self, *args: str, timeout: float = 300, **env) -> str:
        """Run the prefect CLI against the stack's server; fail loudly with its output."""
        cmd = [str(BIN / "prefect"), "--no-prompt", *args]
        out = subprocess.run(cmd, cwd=REPO, env={**self.env, **env}, capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            raise SystemExit(f"FAILED: {' '.join(cmd[1:])}\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        """A long-running prefect process in its own session (so cleanup can end its group)."""
        logfile = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(
            [str(BIN / "prefect"), *args],
            cwd=REPO,
            env=self.env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc


def _wait_healthy(stack: Stack, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(
                f"FAILED: the server exited; see {stack.tmp / 'server.log'}:\n"
                f"{(stack.tmp / 'server.log').read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{stack.api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(1)
    raise SystemExit(f"FAILED: the server did not answer within {timeout:.0f} s")


def _stop(procs: list) -> None:
    """Stop the processes this script started, newest first (the worker before its server)."""
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def server_stack(keep_dir: bool = False) -> Iterator[Stack]:
    """A Prefect server on a free port with its own PREFECT_HOME; stopped (and the dir
    removed unless ``keep_dir``) on exit."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated check still stops its server
    tmp = Path(tempfile.mkdtemp(prefix="semoe-deploy-check-"))
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_WORKER_QUERY_SECONDS": "3",
        "SEMOE_REPO": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PREFECT_PROFILES_PATH", None)
    stack = Stack(tmp, env, f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}")
    try:
        log(f"server on port {port}, PREFECT_HOME {tmp / 'prefect'}")
        server = stack.spawn("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))
        _wait_healthy(stack, server)
        yield stack
    finally:
        _stop(stack.procs)
        if keep_dir:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def deploy_and_run(stack: Stack, timeout: float = 600) -> str:
    """Pools, ``prefect deploy --all``, a worker, and one scheduled run through it; returns
    the id of the Completed flow run."""
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("PREFECT_")})  # before prefect is imported
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    for pool, args in POOLS.items():
        stack.prefect("work-pool", "create", pool, *args, "--overwrite")
        log(f"work pool {pool} created ({args[1]})")
    out = stack.prefect("deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    with get_client(sync_client=True) as client:
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
        log(f"deployed: {', '.join(sorted(deployments))}")
        nightly = deployments[DEPLOYMENT]
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"], nightly.schedules
        assert nightly.job_variables == {"env": {"CUDA_VISIBLE_DEVICES": "0"}}, nightly.job_variables
        assert nightly.parameters["config"]["name"] == "demo", nightly.parameters

    stack.spawn(
        "worker", "worker", "start", "--pool", "semoe-gpu", "--type", "process", "--name", WORKER_NAME, "--limit", "1"
    )
    params = json.dumps({"config": tiny_config(stack.tmp)})
    out = stack.prefect("deployment", "run", DEPLOYMENT, "--params", params, "--start-in", "10 seconds")
    found = re.search(r"UUID:?\s*([0-9a-f]{8}-[0-9a-f-]{27})", out)
    if not found:
        raise SystemExit(f"FAILED: no flow run id in the output of `prefect deployment run`:\n{out}")
    run_id = found[1]
    log(f"flow run {run_id} scheduled 10 s ahead; waiting for the worker to run it")

    deadline, last = time.monotonic() + timeout, None
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            if run.state_name != last:
                log(f"state: {run.state_name}")
                last = run.state_name
            if run.state and run.state.is_final():
                break
            time.sleep(2)
        if not (run.state and run.state.is_completed()):
            worker_log = (stack.tmp / "worker.log").read_text()[-4000:]
            raise SystemExit(
                f"FAILED: flow run {run_id} ended {run.state_name!r} (or timed out)\nworker log:\n{worker_log}"
            )
        upcoming = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Scheduled"]))),
        )
        assert upcoming, "the scheduler created no runs from the nightly cron schedule"
        log(f"nightly schedule: {len(upcoming)} upcoming runs, first at {min(r.expected_start_time for r in upcoming)}")
        limit = client.read_global_concurrency_limit_by_name(f"gpu:{WORKER_NAME}:cpu")
        assert limit.active_slots == 0, limit
        log(
            f"run Completed through worker {WORKER_NAME!r}; "
            f"GPU limit {limit.name} (limit {limit.limit}) created and released"
        )
    return run_id


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep-dir", action="store_true", help="keep the temp dir (server and worker logs)")
    args = ap.parse_args()
    with server_stack(args.keep_dir) as stack:
        deploy_and_run(stack)
    log("deployments check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
