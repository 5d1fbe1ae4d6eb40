"""UI check: after a deployment run through a worker (scripts/check_deployments.py), the
Prefect UI shows the run's task runs and its artifacts (leaderboard table, markdown summary,
progress) in a real headless browser, Debian's chromium, driven over the DevTools protocol.
Screenshots go to docs/img/. Usage: ``.venv/bin/python scripts/check_ui.py [--keep-dir]``.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_deployments import REPO, deploy_and_run, log, server_stack  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IMG = REPO / "docs" / "img"
ARTIFACT_KEYS = ("semoe-leaderboard", "semoe-summary", "semoe-progress")


class Browser:
    """Just enough of the DevTools protocol: navigate, read the page text, click, screenshot."""

    def __init__(self, width: int = 1440, height: int = 960):
        from websockets.sync.client import connect

        self.profile = Path(tempfile.mkdtemp(prefix="semoe-chromium-"))
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file, deadline = self.profile / "DevToolsActivePort", time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("FAILED: chromium did not start (no DevToolsActivePort)")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.ids = itertools.count(1)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, texts: list[str], timeout: float = 60) -> str:
        """The page text once every one of ``texts`` is on the page."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.js("document.body ? document.body.innerText : ''") or ""
            missing = [t for t in texts if t not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"FAILED: {missing} not shown at {self.js('location.href')}; page text:\n{text[:3000]}"
                )
            time.sleep(0.5)

    def click(self, label: str) -> None:
        """Click the innermost visible element whose text is exactly ``label`` (a tab, a link)."""
        clicked = self.js(
            "(() => { const els = [...document.querySelectorAll('button, a, [role=tab], li, span, div')]"
            f".filter(e => e.innerText && e.innerText.trim() === {json.dumps(label)} && e.offsetParent !== null);"
            " const el = els[els.length - 1]; if (!el) return false; el.click(); return true; })()"
        )
        if not clicked:
            raise SystemExit(f"FAILED: nothing labelled {label!r} to click at {self.js('location.href')}")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        log(f"screenshot {path.relative_to(REPO)}")

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=20)
        shutil.rmtree(self.profile, ignore_errors=True)


def evaluate_subflow(run_id: str):
    """The ``evaluate`` child of the pipeline run: it holds the task runs and artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
        )
        (child,) = [r for r in children if client.read_flow(r.flow_id).name == "evaluate"]
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[child.id]))
        )
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [child.id]}))
    by_key = {a.key: a for a in arts}
    assert set(ARTIFACT_KEYS) <= set(by_key), sorted(by_key)
    return child, sorted(t.name for t in tasks), by_key["semoe-leaderboard"].id


def check_ui(ui_url: str, run_id: str) -> None:
    child, task_names, leaderboard_id = evaluate_subflow(run_id)
    log(f"evaluate subflow {child.name}: task runs {task_names}")
    browser = Browser()
    try:
        browser.goto(f"{ui_url}/runs/flow-run/{child.id}")
        browser.wait_for([child.name, "Completed", "Task Runs", "Artifacts"])
        browser.click("Task Runs")
        browser.wait_for(task_names)
        browser.screenshot(IMG / "prefect-ui-run.png")
        browser.click("Artifacts")
        browser.wait_for(list(ARTIFACT_KEYS))
        browser.screenshot(IMG / "prefect-ui-artifacts.png")
        browser.goto(f"{ui_url}/artifacts/artifact/{leaderboard_id}")
        browser.wait_for(["semoe-leaderboard", "no-retrieval", "seconds_per_question"])
        browser.screenshot(IMG / "prefect-ui-leaderboard.png")
        log("the flow run page lists its task runs and artifacts; the leaderboard table renders")
    finally:
        browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep-dir", action="store_true", help="keep the temp dir (server and worker logs)")
    args = ap.parse_args()
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"FAILED: {CHROMIUM} is missing: apt-get install -y chromium (make ui-check does it)")
    with server_stack(args.keep_dir) as stack:
        check_ui(stack.ui_url, deploy_and_run(stack))
    log("UI check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
