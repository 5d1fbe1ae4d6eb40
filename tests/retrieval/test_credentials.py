"""Elasticsearch credentials come from the environment or a Prefect Secret block, never from
the config, so they never reach the stored run config (``runs.config_json``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from semoe.cli import main
from semoe.config import ConfigError, SemoeConfig, config_from_dict
from semoe.retrieval.backends.elasticsearch_bm25 import _auth
from semoe.retrieval.base import RetrievalError
from semoe.storage.results import ResultStore

REPO = Path(__file__).resolve().parents[2]
URL_WITH_PASSWORD = "https://elastic:hunter2@es.example:9200"
ES_ENV = ("SEMOE_ES_API_KEY", "SEMOE_ES_USER", "SEMOE_ES_PASSWORD", "SEMOE_ES_CA_CERTS")


@pytest.fixture
def no_es_env(monkeypatch):
    for name in ES_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_url_with_credentials_is_rejected_without_echoing_them(capsys):
    with pytest.raises(ConfigError, match="retrieval.es_url: .*must not contain credentials") as exc:
        config_from_dict({"retrieval": {"es_url": URL_WITH_PASSWORD}})
    assert "hunter2" not in str(exc.value)
    assert (
        main(["validate", str(REPO / "configs" / "demo.yaml"), "--set", f"retrieval.es_url={URL_WITH_PASSWORD}"]) == 2
    )
    err = capsys.readouterr().err
    assert "must not contain credentials" in err and "hunter2" not in err


def test_environment_credentials_win_and_must_be_complete(no_es_env):
    no_es_env.setenv("SEMOE_ES_USER", "elastic")
    with pytest.raises(RetrievalError, match="set both SEMOE_ES_USER and SEMOE_ES_PASSWORD"):
        _auth("ignored-block")
    no_es_env.setenv("SEMOE_ES_PASSWORD", "pw")
    assert _auth("ignored-block") == ({"basic_auth": ("elastic", "pw")}, "SEMOE_ES_USER/SEMOE_ES_PASSWORD")
    no_es_env.setenv("SEMOE_ES_API_KEY", "key")
    assert _auth("ignored-block") == ({"api_key": "key"}, "SEMOE_ES_API_KEY")


def test_secret_block_forms(no_es_env, prefect_api):
    from prefect.blocks.system import Secret

    Secret(value="block-key").save("semoe-es-key", overwrite=True)
    Secret(value={"username": "elastic", "password": "block-pw"}).save("semoe-es-basic", overwrite=True)
    Secret(value={"token": "x"}).save("semoe-es-bad", overwrite=True)
    assert _auth("semoe-es-key") == ({"api_key": "block-key"}, "Secret block 'semoe-es-key'")
    assert _auth("semoe-es-basic")[0] == {"basic_auth": ("elastic", "block-pw")}
    with pytest.raises(RetrievalError, match="Secret block 'semoe-es-bad' must hold an API key string"):
        _auth("semoe-es-bad")
    with pytest.raises(RetrievalError, match="cannot load Prefect Secret block 'semoe-es-missing'"):
        _auth("semoe-es-missing")
    assert _auth(None) == ({}, "no credentials (set SEMOE_ES_API_KEY, or SEMOE_ES_USER and SEMOE_ES_PASSWORD)")


@pytest.mark.slow
def test_credentials_never_land_in_the_run_rows(tmp_path, tiny_lm_dir, no_es_env, prefect_api):
    """A real evaluate flow run with credentials in the environment and in a Secret block
    (and a GPU limit forced on CPU, created at flow start); then the same config with the
    password in the URL, which is refused before anything is written."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ParameterTypeError

    from semoe.flows.pipeline import evaluate

    no_es_env.setenv("SEMOE_ES_API_KEY", "env-key-s3cret")
    Secret(value={"username": "elastic", "password": "block-pw-s3cret"}).save("semoe-es-run", overwrite=True)
    data = {
        "name": "credentials-test",
        "synthetic": {"seed": 5, "n_entities": 8, "n_questions": 2},
        "retrieval": {"backend": "elasticsearch", "es_url": "http://127.0.0.1:9", "es_secret_block": "semoe-es-run"},
        "model": {"spec": tiny_lm_dir, "device": "cpu"},
        "generation": {"max_new_tokens": 2, "batch_size": 2, "few_shot": 0},
        "methods": ["no-retrieval"],
        "store": {"path": str(tmp_path / "results.duckdb")},
        "cache": {"root": str(tmp_path / "cache")},
        "report": {"write": False},
        "gpu": {"limit": "on", "worker": "credentials-test"},
    }
    assert evaluate(SemoeConfig.model_validate(data))["produced"] == 2
    store = ResultStore(tmp_path / "results.duckdb")
    (row,) = store.query("select config_json from runs")
    assert "semoe-es-run" in row["config_json"] and "127.0.0.1:9" in row["config_json"]
    assert "s3cret" not in row["config_json"]
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("gpu:credentials-test:cpu")
    assert limit.active_slots == 0

    leaky = {**data, "name": "leaky", "retrieval": {"backend": "elasticsearch", "es_url": URL_WITH_PASSWORD}}
    with pytest.raises(ParameterTypeError, match="must not contain credentials"):
        evaluate(leaky)
    assert store.query("select count(*) n from runs where config_json like '%hunter2%' or name = 'leaky'")[0]["n"] == 0
