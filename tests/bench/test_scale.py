"""bench/scale.py end to end at a small size: it generates, measures, drains and prints its ratio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scale

# A run of the scale benchmark itself: its drains are timed, so it runs with `make bench`, not in the suite.
pytestmark = [pytest.mark.slow, pytest.mark.bench]


def test_scale_bench_measures_both_sizes_the_peak_and_the_drain(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    scale.main(["--couples", "3000", "--small", "600", "--due", "200", "--peak", "1000", "--drain-seconds", "3",
                "--workers", "2", "--database", "closer_scale_pytest", "--json", str(tmp_path / "scale.json")])

    out = capsys.readouterr().out
    figures = json.loads((tmp_path / "scale.json").read_text())
    assert "ratio large/small: time" in out
    assert figures["small"]["couples"] == 600 and figures["large"]["couples"] == 3000
    assert figures["small"]["created"] == figures["large"]["created"] == 200
    assert figures["peak"]["created"] == 1000 and figures["redis_jobs"] == 1000 // 50
    assert figures["redis_after_mib"] > figures["redis_before_mib"]
    assert 0 < figures["drained_at_rate"] <= figures["configured_rate"] * 1.1
    assert figures["drained_unlimited"] > figures["drained_at_rate"]
