import subprocess
import sys

import pytest
from pydantic import ValidationError

from semoe.checks import check_config
from semoe.config import ConfigError, MethodSpec, SemoeConfig, apply_overrides, config_from_dict, load_config
from semoe.registry import Registry, UnknownNameError

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_demo_config_loads_and_names_resolve():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    check_config(cfg)
    assert cfg.retrieval.backend == "tantivy"


def test_overrides_parse_yaml_values_and_nested_keys():
    cfg = load_config(
        REPO / "configs" / "demo.yaml", ["retrieval.top_k=5", "methods=[no-retrieval]", "datasets.0.sample=7"]
    )
    assert cfg.retrieval.top_k == 5
    assert cfg.methods == [MethodSpec(name="no-retrieval")]
    assert cfg.datasets[0].sample == 7


def test_hash_changes_with_results_settings_but_not_with_store_location():
    base = SemoeConfig()
    assert base.config_hash() == SemoeConfig().config_hash()
    moved = SemoeConfig.model_validate(
        {"store": {"path": "/elsewhere.duckdb"}, "cache": {"root": "/tmp/x"}, "report": {"write": False}}
    )
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
    [
        (["methods=[no-such-method]"], "method"),
        (["retrieval.backend=solr"], "retriever"),
        (["datasets=[{name: nq}]"], "dataset"),
    ],
)
def test_unknown_registered_names_are_reported_with_the_alternatives(overrides, kind):
    cfg = load_config(None, overrides)
    with pytest.raises(UnknownNameError, match=f"unknown {kind} .*registered: "):
        check_config(cfg)


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
    check_config(load_config(path))


def test_methods_are_names_or_specs_with_params_and_unique_labels():
    cfg = SemoeConfig.model_validate(
        {
            "methods": [
                "no-retrieval",
                {"name": "dragin", "label": "dragin-t1", "params": {"hallucination_threshold": 1.0}},
                {"name": "dragin", "label": "dragin-t2", "params": {"hallucination_threshold": 2.0}},
                {"name": "prag", "label": "prag-r4", "params": {"experts": {"rank": 4}}},
            ]
        }
    )
    check_config(cfg)
    assert [m.display_name for m in cfg.methods] == ["no-retrieval", "dragin-t1", "dragin-t2", "prag-r4"]
    with pytest.raises(ConfigError, match=r"methods: .*listed twice.*distinct `label`"):
        config_from_dict({"methods": ["dragin", {"name": "dragin", "params": {"max_retrievals": 1}}]})
    bad = SemoeConfig.model_validate({"methods": [{"name": "prag", "label": "p", "params": {"experts": {"rank": 0}}}]})
    with pytest.raises(ConfigError, match=r"methods: 'p' \(prag\) params: experts.rank"):
        check_config(bad)
    with pytest.raises(ConfigError, match=r"no-retrieval.*params: x: Extra inputs"):
        check_config(SemoeConfig.model_validate({"methods": [{"name": "no-retrieval", "params": {"x": 1}}]}))


def test_sections_are_frozen():
    cfg = SemoeConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.retrieval.top_k = 9
    assert cfg.model_copy(update={"name": "other"}).name == "other"


def test_the_config_package_is_a_leaf():
    """Importing semoe.config loads no other semoe module (so every module may import it)."""
    code = (
        "import sys, semoe.config; "
        "print(sorted(m for m in sys.modules if m.startswith('semoe') and not m.startswith('semoe.config')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['semoe']"
