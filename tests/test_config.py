import pytest

from semoe.config import ConfigError, SemoeConfig, apply_overrides, load_config
from semoe.registry import Registry, UnknownNameError

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_demo_config_loads_and_names_resolve():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    cfg.check_names()
    assert cfg.retrieval.backend == "tantivy"


def test_overrides_parse_yaml_values_and_nested_keys():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["retrieval.top_k=5", "methods=[no-retrieval]", "datasets.0.sample=7"])
    assert cfg.retrieval.top_k == 5
    assert cfg.methods == ["no-retrieval"]
    assert cfg.datasets[0].sample == 7


def test_hash_changes_with_results_settings_but_not_with_store_location():
    base = SemoeConfig()
    assert base.config_hash() == SemoeConfig().config_hash()
    moved = SemoeConfig.model_validate({"store": {"path": "/elsewhere.duckdb"}, "cache": {"root": "/tmp/x"}})
    assert moved.config_hash() == base.config_hash()
    assert SemoeConfig.model_validate({"retrieval": {"top_k": 5}}).config_hash() != base.config_hash()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["retrieval.top_k=0"], "retrieval.top_k"),
        (["retrieval.topk=3"], "retrieval.topk"),
        (["generation.max_new_tokens=lots"], "generation.max_new_tokens"),
        (["methods=[]"], "methods"),
        (["nonsense"], "not of the form"),
    ],
)
def test_invalid_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("retrieval: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "overrides, kind",
    [(["methods=[no-such-method]"], "method"), (["retrieval.backend=solr"], "retriever"), (["datasets=[{name: nq}]"], "dataset")],
)
def test_unknown_registered_names_are_reported_with_the_alternatives(overrides, kind):
    cfg = load_config(None, overrides)
    with pytest.raises(UnknownNameError, match=f"unknown {kind} .*registered: "):
        cfg.check_names()


def test_registry_rejects_double_registration():
    reg: Registry = Registry("thing")
    reg.register("a")(object)
    with pytest.raises(ValueError):
        reg.register("a")(int)
    assert reg.names() == ["a"]


def test_override_helper_does_not_mutate_input():
    data = {"retrieval": {"top_k": 3}}
    out = apply_overrides(data, ["retrieval.top_k=4"])
    assert data["retrieval"]["top_k"] == 3 and out["retrieval"]["top_k"] == 4


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    load_config(path).check_names()
