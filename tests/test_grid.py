"""Robustness grids from the data (tsynd_tf.robustness) and how a sweep uses them."""

import datetime
import json

import pytest

from tsynd_tf import experiment
from tsynd_tf import robustness

CLEAN, FLOOR = 0.90, 0.50  # balanced accuracy: clean, and a constant prediction's


def test_only_strengths_strictly_inside_the_band_are_kept():
    curve = {0.001: 0.90, 0.002: 0.885, 0.004: 0.86, 0.008: 0.70, 0.016: 0.52, 0.032: 0.50}
    # The band is (0.52, 0.88): 0.885 is within the margin of clean, 0.52 within the floor's.
    assert robustness.choose(curve, CLEAN, FLOOR) == [0.004, 0.008]


def test_a_steep_curve_is_refined_between_the_band_edges():
    curve = {0.005: 0.90, 0.01: 0.89, 0.02: 0.51, 0.04: 0.50}
    extra = robustness.refine(curve, CLEAN, FLOOR)
    assert len(extra) == 3 and all(0.01 < s < 0.02 for s in extra), extra
    assert extra == sorted(extra)


def test_at_most_max_points_spread_in_log_strength():
    points = robustness.ladder(0.16, 2 ** 0.5, 13)
    assert points[0] == 0.0025 and points[-1] == 0.16 and len(points) == 13
    picked = robustness.spread(points, robustness.MAX_POINTS)
    assert len(picked) == robustness.MAX_POINTS and picked[0] == points[0] and picked[-1] == 0.16
    assert robustness.spread(points[:3], robustness.MAX_POINTS) == points[:3]


def test_a_config_with_a_grid_flagfile_gets_it_last(tmp_path):
    config = tmp_path / "tiny.cfg"
    config.write_text("--train_count=32\n")
    assert experiment.grid_flagfile(str(config)) is None
    (tmp_path / "robustness").mkdir()
    (tmp_path / "robustness" / "tiny.cfg").write_text("--gaussian_sigmas=0,0.01\n")
    assert experiment.grid_flagfile(str(config)) == tmp_path / "robustness" / "tiny.cfg"


def test_rerun_before_reopens_only_cells_finished_earlier(tmp_path):
    results = tmp_path / "results.jsonl"
    lines = [{"cell": "a", "finished": "2026-11-22T10:00:00+00:00"},
             {"cell": "b", "finished": "2026-11-22T10:00:00+00:00"},
             {"cell": "b", "finished": "2026-12-01T21:00:00+00:00"},  # re-run already
             {"cell": "c"},  # recorded no finish time
             {"plan": [["x", "baseline", 0]]}]
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert experiment.finished_cells(results) == {"a", "b", "c"}
    cutoff = experiment.parse_rerun_before("2026-12-01T20:30:00+00:00")
    assert cutoff == datetime.datetime(2026, 12, 1, 20, 30, tzinfo=datetime.timezone.utc)
    assert experiment.finished_cells(results, cutoff) == {"b"}
    for bad in ("yesterday", "2026-12-01T20:30:00"):  # no offset: ambiguous
        with pytest.raises(Exception, match="--rerun_before"):
            experiment.parse_rerun_before(bad)
