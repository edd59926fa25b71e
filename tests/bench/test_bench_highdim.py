"""The high-dimensional scenario's pieces: the planted ip upgrade and the report's markdown."""

from __future__ import annotations

import json

import pytest

from bench import highdim
from bench.common import RESULTS


def test_planted_ip_upgrade_is_exact() -> None:
    r = highdim._ip()
    assert r["normalize_input"] is False
    assert r["new_new_exact_top10"] == 1.0 and r["new_old_top10_overlap"] >= 0.99


def test_features_have_the_shape_of_the_1280d_upgrade() -> None:
    G, H, y = highdim.features(50)
    assert G.shape == H.shape == (50, 1280) and y.shape == (50,)
    assert (H >= 0).all()  # post-ReLU pooled features


@pytest.mark.skipif(not (RESULTS / "highdim.json").exists() and not (RESULTS / "highdim-quick.json").exists(),
                    reason="bench/results/highdim*.json not generated yet")
def test_stored_result_renders_and_meets_its_goals() -> None:
    p = RESULTS / "highdim.json"
    r = json.loads((p if p.exists() else RESULTS / "highdim-quick.json").read_text())
    md = highdim.markdown(r)
    assert "compatindex upgrade" in md and "metric='ip'" in md
    lab = next(c for c in r["cli"] if c["labels"])
    assert lab["exit_code"] == 0 and lab["seconds"] < 120 and lab["new_old"]["top1"] > lab["old_old"]["top1"]
    assert all(c["exit_code"] == 0 for c in r["cli"])
