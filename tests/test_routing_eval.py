"""Routing evaluation helpers: perplexity, decoding speed, memory, heatmaps, DuckDB rows, config."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import pytest
import torch
from test_routing_adapters import one_thread, tiny_moe, token_ids  # noqa: F401

from semoe.config import RoutingEvalConfig
from semoe.routing.decoding import decode, perplexity
from semoe.routing.measure import evaluate_policy, write_heatmap_png
from semoe.routing.tables import ROUTING_LAYER_STATS_COLUMNS, ROUTING_RUNS_COLUMNS, policy_key
from semoe.storage.results import migrate


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


def read_png(path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2) and b"IEND" in chunks
    return width, height, zlib.decompress(chunks[b"IDAT"])


def test_heatmap_png_is_valid(tmp_path):
    path = tmp_path / "heat.png"
    write_heatmap_png(path, [[0, 5, 10, 1], [3, 3, 3, 3], [0, 0, 0, 0]], cell=4)
    width, height, raw = read_png(path)
    assert (width, height) == (16, 12) and len(raw) == height * (1 + 3 * width)
    rows = [raw[y * (1 + 3 * width) + 1 : (y + 1) * (1 + 3 * width)] for y in range(height)]
    assert rows[0][24:27] == bytes([253, 231, 37])  # the largest share is the brightest colour
    assert rows[8][:3] == bytes([68, 1, 84])  # an empty layer is the darkest


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
    from semoe.config import MoeLMConfig

    torch.manual_seed(0)
    cfg = MoeLMConfig(
        d_model=32,
        n_layers=2,
        num_heads=4,
        num_experts=4,
        k=2,
        ffn_hidden_dim=32,
        max_seq_len=64,
        router_hidden_dim=8,
        seq_len=32,
    )
    model = moe_lm.MoeLM(cfg).eval()
    ids = torch.randint(0, 258, (1, 12), generator=torch.Generator().manual_seed(0))
    assert perplexity(model, [ids], {"name": "topk", "params": {"k": 3}}).stats.experts_per_token() == 3
    assert decode(model, ids, {"name": "top-p", "params": {"p": 0.9}}, max_new_tokens=4).new_tokens == 4
