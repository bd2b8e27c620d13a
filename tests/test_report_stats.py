"""The report's statistics (tsynd_tf.report.stats) against scipy and hand computations, and
the selected-epoch count of the report's records (pre-synth. column)."""

import json
import math
import sys

import numpy as np
import pytest
from conftest import run_command
from scipy import stats as scipy_stats

from tsynd_tf.report.stats import (
    format_mean_std, format_p, holm, mean_std, p_is, paired_test)

# Three pairs of methods over seeds (seed -> metric), with differences of mixed signs, all
# positive, and of one sign but for one seed.
PAIRS = [
    ({0: 0.81, 1: 0.84, 2: 0.79, 3: 0.88, 4: 0.83}, {0: 0.78, 1: 0.80, 2: 0.80, 3: 0.82, 4: 0.79}),
    ({0: 0.70, 1: 0.75, 2: 0.72}, {0: 0.65, 1: 0.61, 2: 0.69}),
    ({0: 0.91, 1: 0.90, 2: 0.93, 3: 0.89, 4: 0.92, 5: 0.95},
     {0: 0.92, 1: 0.85, 2: 0.90, 3: 0.84, 4: 0.86, 5: 0.88}),
]


@pytest.mark.parametrize("a, b", PAIRS)
def test_paired_test_matches_scipy(a, b):
    x, y = np.array([a[s] for s in sorted(a)]), np.array([b[s] for s in sorted(b)])
    result = paired_test(a, b)
    assert result["n"] == len(a)
    assert result["mean"] == pytest.approx(float(np.mean(x - y)), abs=1e-12)
    assert result["t_p"] == pytest.approx(scipy_stats.ttest_rel(x, y).pvalue, rel=1e-9)
    assert result["wilcoxon_p"] == pytest.approx(scipy_stats.wilcoxon(x - y).pvalue, rel=1e-9)
    low, high = scipy_stats.ttest_rel(x, y).confidence_interval(0.95)
    assert result["ci"] == pytest.approx((low, high), rel=1e-9)


def test_paired_test_known_values():
    # Differences 1, 2, 3: mean 2, sample std 1, t = 2 / (1 / sqrt(3)) = sqrt(12), df = 2.
    # With 2 degrees of freedom the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided
    # p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(12 / 14) = 0.0741799...
    # Wilcoxon, exact: all 3 differences positive, the most extreme of 2^3 sign patterns on
    # either side: p = 2 / 8 = 0.25.
    result = paired_test({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert result["n"] == 3 and result["mean"] == pytest.approx(2.0)
    assert result["t_p"] == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)
    assert result["wilcoxon_p"] == pytest.approx(0.25)
    # Five differences all positive: the exact Wilcoxon floor 2 / 2^5 (the page's note).
    five = paired_test(PAIRS[0][0], {s: v - 0.01 * (s + 1) for s, v in PAIRS[0][0].items()})
    assert five["wilcoxon_p"] == pytest.approx(2 / 2**5)


def test_paired_test_pairs_only_the_seeds_both_have():
    a = {0: 0.5, 1: 0.60, 2: 0.70, 3: 0.90}
    b = {1: 0.55, 2: 0.62, 3: 0.80, 5: 0.10}  # seeds 0 and 5 have no partner
    result = paired_test(a, b)
    assert result["n"] == 3
    assert result["mean"] == pytest.approx((0.05 + 0.08 + 0.10) / 3)
    x, y = [0.60, 0.70, 0.90], [0.55, 0.62, 0.80]
    assert result["t_p"] == pytest.approx(scipy_stats.ttest_rel(x, y).pvalue, rel=1e-9)
    assert paired_test(b, a)["mean"] == pytest.approx(-result["mean"])


def test_paired_test_undefined_p_values():
    one = paired_test({0: 0.8, 1: 0.7}, {0: 0.6, 2: 0.9})  # a single pair: seed 0
    assert one == {"n": 1, "mean": pytest.approx(0.2), "ci": None, "t_p": None,
                   "wilcoxon_p": None}
    none = paired_test({0: 0.8}, {1: 0.6})
    assert none["n"] == 0 and math.isnan(none["mean"]) and none["t_p"] is None
    # All differences equal: no t-test (zero variance), Wilcoxon still defined.
    equal = paired_test({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.6})
    assert equal["t_p"] is None and equal["ci"] is None
    assert equal["wilcoxon_p"] == pytest.approx(0.25)
    # Equal metrics along other float paths (0.1 + 0.2 != 0.3) count as zero differences.
    zero = paired_test({0: 0.1 + 0.2, 1: 0.5}, {0: 0.3, 1: 0.5})
    assert zero["mean"] == 0.0 and zero["t_p"] is None and zero["wilcoxon_p"] is None


def test_holm_by_hand():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4; ascending: 0.005, 0.01, 0.03, 0.04.
    #   rank 0: 4 x 0.005 = 0.02
    #   rank 1: 3 x 0.01  = 0.03
    #   rank 2: 2 x 0.03  = 0.06
    #   rank 3: 1 x 0.04  = 0.04 -> raised to 0.06 (never below an earlier rank's value)
    # In the input order: [0.03, 0.06, 0.06, 0.02].
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # p = [0.01, 0.6, 0.8]: 3 x 0.01 = 0.03; 2 x 0.6 = 1.2 -> capped at 1; 1 x 0.8 = 0.8 ->
    # raised to 1 (monotone after the cap).
    assert holm([0.01, 0.6, 0.8]) == pytest.approx([0.03, 1.0, 1.0])
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_mean_std_and_formats():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))  # ddof=1
    assert mean_std([0.7])[0] == 0.7 and math.isnan(mean_std([0.7])[1])
    assert all(math.isnan(v) for v in mean_std([]))
    assert format_mean_std([0.8, 0.9]) == "0.850 ± 0.071"
    assert format_mean_std([0.8]) == "0.800" and format_mean_std([]) == "–"
    assert [format_p(p) for p in (0.01234, 0.0004, 0.001, None, math.nan)] == [
        "0.012", "<0.001", "0.001", "n/a", "n/a"]
    assert [p_is(0.01234), p_is(0.0004), p_is(None), p_is(0.2, "Holm p")] == [
        "p=0.012", "p<0.001", "p n/a", "Holm p=0.200"]


def test_statistics_and_tables_import_without_tensorflow():
    code = ("import sys, tsynd_tf.report.stats, tsynd_tf.report.tables, tsynd_tf.report.figures; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    done = run_command([sys.executable, "-c", code])
    assert done.stdout.strip() == "[]", done


def test_pre_synthetic_counts_read_the_selected_epoch(tmp_path):
    """Recorded in the cell's training results, else the run's results; unknown without."""
    from tsynd_tf import runs
    from tsynd_tf.report import records

    cells = []
    for seed, in_record, in_run in ((0, 3, None), (1, None, 5), (2, None, 2), (3, None, None)):
        run = runs.SweepDir(tmp_path).run(f"c_tsynd_mi_s{seed}")
        run.path.mkdir(parents=True)
        (run.config_file).write_text(json.dumps({"flags": {"initial_epochs": 3}}))
        if in_run is not None:
            run.write_results({"selected_epoch": in_run})
        training = {"num_labelled": 8, **({"selected_epoch": in_record} if in_record else {})}
        cells.append({"cell": run.path.name, "run_dir": str(run.path), "config": "c",
                      "method": "tsynd_mi", "seed": seed, "dataset": "d", "train_count": 8,
                      "train_fraction": 0.1, "training": training, "metrics": {}})
    config = records.Config("c", cells, tmp_path)
    # Epochs 3 (record), 5 and 2 (run results) against 3 initial epochs; seed 3 unknown.
    assert records.pre_synthetic_counts(config, "tsynd_mi") == "2/3"
    assert records.pre_synthetic_counts(records.Config("c", cells[3:], tmp_path),
                                        "tsynd_mi") == "?"
    assert records.pre_synthetic_counts(config, "baseline") == "–"
