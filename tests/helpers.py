"""Shared test data: small corpora and files of ../shared/data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from semoe.data.schema import Passage

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(rel: str) -> Path:
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"../shared/data not present: {path}")
    return path


CORPUS = [
    Passage("p1", "Quorvanthe", "Quorvanthe is a river town famous for glass bells and a winter market."),
    Passage("p2", "Meridel Abbey", "Meridel Abbey was founded by monks who copied star charts."),
    Passage("p3", "Tobin Ashcroft", "Tobin Ashcroft (born 1871) was a painter of harbours and lighthouses."),
    Passage("p4", "The Glass Bell", "The Glass Bell is a novel about a bell maker in a small town."),
    Passage("p5", "Harbour Lights", "Harbour Lights is a painting of a harbour at night by an unknown painter."),
    Passage("p6", "Winter Market", "A winter market is held in many towns; the market sells bells, bread and wool."),
]

AWKWARD_QUERIES = [
    'Who painted "Harbour Lights"?',
    "title:Quorvanthe AND (river OR town)",
    "NOT OR AND",
    "((( unbalanced",
    'say "unterminated',
    "a:b:c -minus +plus ~tilde ^2 * ? [1 TO 5] {x} \\ / !",
    "IN [a b]",
    "   ",
    "",
    "x" * 200,
    "Ünïcödé naïve café — 東京 🎉",
]
