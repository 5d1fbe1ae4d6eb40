"""deployments/prefect.yaml: parameters equal the config files (drift fails), every flow has
a deployment, schedules and work pools are well-formed, the Kubernetes base job template
has the structure a prefect-kubernetes worker expects and requests GPUs; `semoe serve`
builds the right deployment. No server needed (scripts/check_deployments.py applies them)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from semoe.cli import main
from semoe.config import ConfigError, load_config
from semoe.deployments import FLOWS, check, render, served_deployment

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "deployments" / "prefect.yaml"
TEMPLATE = REPO / "deployments" / "k8s-gpu-job-template.json"


def _deployments() -> list[dict]:
    return yaml.safe_load(PROJECT.read_text())["deployments"]


def test_shipped_deployments_match_the_config_files(monkeypatch, capsys):
    assert check(PROJECT, REPO) == []
    assert render(PROJECT, REPO) == PROJECT.read_text()
    monkeypatch.chdir(REPO)  # config file paths are relative to the repository root, like entrypoints
    assert main(["deployments", "check"]) == 0
    assert "match their config files" in capsys.readouterr().out


@pytest.fixture
def project_copy(tmp_path) -> Path:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    shutil.copytree(REPO / "deployments", tmp_path / "deployments")
    return tmp_path


def test_a_changed_config_file_is_drift_until_rendered(project_copy):
    path = project_copy / "deployments" / "prefect.yaml"
    demo = project_copy / "configs" / "demo.yaml"
    demo.write_text(demo.read_text().replace("n_questions: 50", "n_questions: 51"))
    problems = check(path, project_copy)
    assert len(problems) == 1 and "semoe deployments render" in problems[0]
    path.write_text(render(path, project_copy))
    assert check(path, project_copy) == []
    nightly = next(d for d in yaml.safe_load(path.read_text())["deployments"] if d["name"] == "pipeline-nightly")
    assert nightly["parameters"]["config"]["synthetic"]["n_questions"] == 51


def test_hand_written_parameters_and_invalid_config_files_are_reported(project_copy):
    path = project_copy / "deployments" / "prefect.yaml"
    path.write_text(path.read_text().replace("parameters: *full", "parameters: {config: {name: typed-by-hand}}"))
    assert check(path, project_copy) == [
        "deployment 'pipeline-weekly': parameters must be one of the rendered anchors (parameters: *name)"
    ]
    (project_copy / "configs" / "full.yaml").write_text("retrieval: {top_k: 0}\n")
    with pytest.raises(ConfigError, match="retrieval.top_k"):
        check(path, project_copy)


def test_every_flow_has_a_deployment_whose_entrypoint_is_that_flow():
    from prefect.flows import load_flow_from_entrypoint

    deployed = {}
    for dep in _deployments():
        flow = load_flow_from_entrypoint(str(REPO / dep["entrypoint"]))
        assert "config" in flow.parameters.properties, dep["name"]
        flow.validate_parameters(dep["parameters"])
        deployed[dep["name"]] = flow.name
    assert set(deployed.values()) == set(FLOWS)


def test_schedules_and_work_pools():
    from prefect.client.schemas.schedules import CronSchedule

    deps = {d["name"]: d for d in _deployments()}
    crons = {name: [CronSchedule(**s).cron for s in d.get("schedules") or []] for name, d in deps.items()}
    assert crons["pipeline-nightly"] == ["0 2 * * *"] and crons["pipeline-weekly"] == ["0 4 * * 0"]
    assert deps["pipeline-nightly"]["parameters"]["config"]["name"] == "demo"
    assert deps["pipeline-weekly"]["parameters"]["config"]["name"] == "full"
    template_vars = json.loads(TEMPLATE.read_text())["variables"]["properties"]
    for name, dep in deps.items():
        pool = dep["work_pool"]
        if pool["name"] == "semoe-gpu":  # process pool: every deployment pins its GPU(s)
            assert "CUDA_VISIBLE_DEVICES" in pool["job_variables"]["env"], name
        else:
            assert pool["name"] == "semoe-k8s" and set(pool["job_variables"]) <= set(template_vars), name


def _placeholders(node) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_placeholders(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_placeholders(v) for v in node)) if node else set()
    return set(re.findall(r"{{\s*([\w.]+)\s*}}", node)) if isinstance(node, str) else set()


def test_kubernetes_job_template_structure_and_gpu_request():
    import prefect.server.api.collections_data as collections_data
    from prefect.utilities.templating import apply_values

    ours = json.loads(TEMPLATE.read_text())
    assert set(ours) == {"job_configuration", "variables"}
    variables = ours["variables"]["properties"]
    assert _placeholders(ours["job_configuration"]) <= set(variables)  # every placeholder is a variable
    # Prefect's own default kubernetes template (bundled with the server): keep all it has.
    bundled = Path(collections_data.__path__[0]) / "views" / "aggregate-worker-metadata.json"
    default = json.loads(bundled.read_text())["prefect-kubernetes"]["kubernetes"]["default_base_job_configuration"]
    assert set(default["job_configuration"]) <= set(ours["job_configuration"])
    assert set(default["variables"]["properties"]) <= set(variables)

    assert variables["gpus"]["type"] == "integer" and variables["gpus"]["default"] >= 1
    values = {k: v.get("default") for k, v in variables.items()} | {"gpus": 2}
    manifest = apply_values(ours["job_configuration"], values)["job_manifest"]
    assert manifest["kind"] == "Job" and manifest["apiVersion"] == "batch/v1"
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_served_deployment_carries_the_resolved_config_and_schedule():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["methods=[no-retrieval]"])
    dep = served_deployment(cfg, "index_corpus", cron="0 3 * * *", name="idx")
    assert dep.name == "idx" and dep.flow_name == "index_corpus"
    assert dep.parameters == {"config": cfg.model_dump(mode="json")}
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]
    assert served_deployment(cfg).name == "demo-serve"
    with pytest.raises(ConfigError, match="unknown flow 'evaluate_everything'"):
        served_deployment(cfg, "evaluate_everything")


def test_serve_command_serves_that_deployment_without_blocking(monkeypatch):
    import prefect

    served = []
    monkeypatch.setattr(prefect, "serve", lambda *deps: served.extend(deps))
    args = ["serve", str(REPO / "configs" / "demo.yaml"), "--set", "generation.few_shot=1", "--cron", "30 1 * * *"]
    assert main(args) == 0
    (dep,) = served
    assert dep.name == "demo-serve" and dep.flow_name == "pipeline"
    assert dep.parameters["config"]["generation"]["few_shot"] == 1
    assert [s.schedule.cron for s in dep.schedules] == ["30 1 * * *"]
