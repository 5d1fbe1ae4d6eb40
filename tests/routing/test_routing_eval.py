"""Routing evaluation helpers: perplexity, decoding speed, memory, heatmaps, DuckDB rows, config."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from semoe.config import PolicySpec, RoutingEvalConfig
from semoe.routing.decoding import decode, perplexity
from semoe.routing.grid import Cell, grid_cells, heatmap_names, heatmap_path
from semoe.routing.heatmaps import HEATMAP_DPI, heatmap_figure, write_heatmap_png
from semoe.routing.measure import evaluate_policy
from semoe.routing.tables import ROUTING_LAYER_STATS_COLUMNS, ROUTING_RUNS_COLUMNS, policy_key
from semoe.storage.results import migrate
from tests.routing.test_routing_adapters import one_thread, tiny_moe, token_ids  # noqa: F401


@pytest.fixture(scope="module")
def olmoe():
    return tiny_moe("olmoe")


@pytest.fixture(scope="module")
def texts(olmoe):
    return [token_ids(olmoe, length=n, seed=n) for n in (9, 16, 23)]


def test_perplexity_under_policies(olmoe, texts):
    own = perplexity(olmoe, texts)
    assert own.tokens == 8 + 15 + 22 and own.texts == 3 and own.perplexity > 1
    assert own.stats.experts_per_token() == 2
    same = perplexity(olmoe, texts, "topk")
    assert same.nll == pytest.approx(own.nll, abs=1e-6)
    roe_clean = perplexity(olmoe, texts, {"name": "roe", "params": {"tau": 0.0, "samples": 3}})
    assert roe_clean.nll == pytest.approx(own.nll, abs=1e-5)
    more = perplexity(olmoe, texts, {"name": "topk", "params": {"k": 8}})
    assert more.nll != pytest.approx(own.nll, abs=1e-6) and more.stats.experts_per_token() == 8
    analyzed = perplexity(olmoe, texts, {"name": "topk", "params": {"k": 8}}, mode="analyze")
    assert analyzed.nll == pytest.approx(own.nll, abs=1e-6) and analyzed.stats.experts_per_token() == 8


def test_decode_speed_and_clean_cache_size(olmoe):
    prompt = token_ids(olmoe, length=8)
    greedy = decode(olmoe, prompt, None, max_new_tokens=6)
    roe = decode(olmoe, prompt, {"name": "roe", "params": {"tau": 2.0, "samples": 4}}, max_new_tokens=6)
    bh = decode(olmoe, prompt, {"name": "bh", "params": {"min_k": 3}}, max_new_tokens=6)
    for result in (greedy, roe, bh):
        assert result.new_tokens == 6 and result.tokens_per_s > 0 and result.sequences.shape == (1, 14)
    assert roe.kv_cache_bytes == greedy.kv_cache_bytes > 0
    assert bh.stats.experts_per_token() >= 3


def test_peak_memory_sees_torch_allocations():
    # A fresh process: the high-water mark of this one depends on every earlier test.
    code = (
        "import torch\nfrom semoe.routing.memory import PeakMemory\n"
        "with PeakMemory() as mem:\n    block = torch.ones(50_000_000)\n    del block\n"
        "print(mem.method, mem.added_bytes)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    method, added = out[-2], float(out[-1])
    assert method in ("vmhwm", "ru_maxrss")
    if method == "vmhwm":
        assert added > 150e6


def read_png(path) -> tuple[int, int]:
    """(width, height) of a PNG that decodes (matplotlib's reader checks every chunk)."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(io.BytesIO(data), format="png")
    return img.shape[1], img.shape[0]


def test_heatmap_figure_axes_colour_bar_and_title(tmp_path):
    """x = MoE expert, y = layer, colour = each layer's activation share in %, a labelled colour
    bar, the title as given; the PNG is the figure's size at HEATMAP_DPI."""
    counts = [[0, 5, 10, 5], [3, 3, 3, 3], [0, 0, 0, 0]]
    title = "olmoe-tiny · bh (alpha=0.05 softmax) · patch mode"
    fig = heatmap_figure(counts, title)
    ax, bar = fig.axes
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (title, "MoE expert", "MoE layer")
    assert bar.get_ylabel() == "share of the layer's activations, %"
    shares = ax.images[0].get_array()
    assert shares.shape == (3, 4) and shares[0].tolist() == [0, 25, 50, 25] and shares[1].tolist() == [25] * 4
    assert shares[2].tolist() == [0] * 4  # a layer that routed nothing
    assert ax.images[0].get_clim() == (0, 50)
    path = write_heatmap_png(tmp_path / "heat.png", counts, title)
    width, height = read_png(path)
    assert (width, height) == (round(fig.get_figwidth() * HEATMAP_DPI), round(fig.get_figheight() * HEATMAP_DPI))
    assert width >= 400 and height >= 250 and not list(tmp_path.glob(".*tmp"))
    with pytest.raises(ValueError, match="non-empty"):
        heatmap_figure([], title)


def test_heatmap_file_names_are_readable_and_unique_per_cell(tmp_path):
    """``<model>__<label>-<setting>__<mode>.png``, sanitised; the cell key stays out of the name,
    and two cells whose words coincide (BH temperature is not in its setting) get -2."""
    routing = RoutingEvalConfig(
        models=["allenai/OLMoE-1B-7B", {"spec": "x", "label": "olmoe tiny"}],
        policies=[
            {"name": "bh", "params": {"alpha": 0.05}},
            {"name": "bh", "params": {"alpha": 0.05, "temperature": 0.5}},
            {"name": "topk", "params": {"k": 2}, "label": "top 2/8"},
        ],
    )
    names = heatmap_names(routing)
    cells = grid_cells(routing)
    assert [names[c.ident(routing)] for c in cells[:4]] == [
        "allenai-OLMoE-1B-7B__baseline-own-k__analyze.png",
        "allenai-OLMoE-1B-7B__bh-alpha-0.05-softmax__patch.png",
        "allenai-OLMoE-1B-7B__bh-alpha-0.05-softmax__patch-2.png",
        "allenai-OLMoE-1B-7B__top-2-8-k-2__patch.png",
    ]
    assert names[cells[5].ident(routing)] == "olmoe-tiny__bh-alpha-0.05-softmax__patch.png"
    assert len(set(names.values())) == len(cells)
    assert not any(PolicySpec(**p.model_dump()).key in n for p in routing.policies for n in names.values())
    assert heatmap_path(tmp_path, Cell(1, 0, "patch"), routing) == tmp_path / names[cells[5].ident(routing)]


def test_rows_fit_the_duckdb_tables(olmoe, texts, tmp_path):
    import duckdb

    con = duckdb.connect()
    migrate(con)
    calib = [token_ids(olmoe, length=40, seed=s) for s in range(3)]
    specs = [None, {"name": "bh", "params": {"alpha": 0.3, "min_k": 1, "max_k": 6, "p_values": "calibrated"}}]
    for spec in specs:
        ev = evaluate_policy(
            olmoe,
            spec,
            texts,
            calibration=calib,
            decode_prompt=texts[0],
            max_new_tokens=3,
            heatmap_path=tmp_path / f"{spec and spec['name']}.png",
        )
        run = ev.run_row("run-1", "tiny-olmoe", setting="s", k=None)
        assert tuple(run) == ROUTING_RUNS_COLUMNS and run["setting"] == "s"
        con.execute(f"INSERT INTO routing_runs VALUES ({', '.join('?' * len(run))})", list(run.values()))
        for row in ev.layer_rows("run-1", "tiny-olmoe"):
            assert tuple(row) == ROUTING_LAYER_STATS_COLUMNS
            con.execute(f"INSERT INTO routing_layer_stats VALUES ({', '.join('?' * len(row))})", list(row.values()))
    got = con.execute(
        "SELECT policy, mode, experts_per_token, floor_rate, decode_tokens_per_s > 0, heatmap_path IS NOT NULL "
        "FROM routing_runs ORDER BY policy"
    ).fetchall()
    assert [g[:2] for g in got] == [("bh", "patch"), ("topk", "analyze")]
    assert got[1][2] == 2 and got[1][3] is None and got[0][3] is not None and all(g[4] and g[5] for g in got)
    layers = con.execute(
        "SELECT layer, len(expert_counts), list_sum(k_histogram) FROM routing_layer_stats "
        "WHERE policy_key LIKE 'bh-%' ORDER BY layer"
    ).fetchall()
    assert layers == [(i, 8, 9 + 16 + 23) for i in range(3)]  # every routed token
    params = con.execute(
        "SELECT json_extract_string(policy_params, '$.null.statistic') FROM routing_runs WHERE policy = 'bh'"
    ).fetchone()
    assert params == ("prob",)


def test_policy_key_is_stable():
    assert policy_key("bh", {"alpha": 0.1, "min_k": 2}) == policy_key("bh", {"min_k": 2, "alpha": 0.1})
    assert policy_key("bh", {"alpha": 0.1}) != policy_key("bh", {"alpha": 0.2})


def test_config_validates_policies():
    from semoe.checks import check_config
    from semoe.config import SemoeConfig

    def check(policies, **routing):
        check_config(SemoeConfig.model_validate({"routing": {"models": ["m"], "policies": policies, **routing}}))

    cfg = RoutingEvalConfig(models=["m"], policies=[{"name": "bh", "params": {"alpha": 0.2}}, {"name": "roe"}])
    assert [p.display_name for p in cfg.policies] == ["bh", "roe"] and cfg.eval_texts == 64
    check([{"name": "bh", "params": {"alpha": 0.2}}, {"name": "roe"}])
    bad = [
        ({"name": "nope"}, "unknown routing policy 'nope'"),
        ({"name": "bh", "params": {"alpha": 2}}, "alpha"),
        ({"name": "topk", "params": {"top_k": 3}}, "top_k"),
    ]
    for spec, message in bad:
        with pytest.raises(ValueError, match=message):
            check([spec])
    with pytest.raises(ValueError, match="calibration_texts > 0"):
        check([{"name": "bh", "params": {"p_values": "calibrated"}}], calibration_texts=0)


def test_importing_the_package_stays_light():
    code = (
        "import sys, semoe.routing as r, semoe.config, semoe.routing.measure;"
        "r.POLICIES.names(); r.ADAPTERS.names();"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_semoe_moe_lm_through_the_evaluation_helpers():
    moe_lm = pytest.importorskip("semoe.moe_lm.model")
    from tests.support.helpers import tiny_moe_lm_config

    torch.manual_seed(0)
    cfg = tiny_moe_lm_config()
    model = moe_lm.MoeLM(cfg).eval()
    ids = torch.randint(0, 258, (1, 12), generator=torch.Generator().manual_seed(0))
    assert perplexity(model, [ids], {"name": "topk", "params": {"k": 3}}).stats.experts_per_token() == 3
    assert decode(model, ids, {"name": "top-p", "params": {"p": 0.9}}, max_new_tokens=4).new_tokens == 4
