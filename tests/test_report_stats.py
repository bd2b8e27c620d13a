"""The report's statistics (tsynd_tf.report.stats) against scipy, simulation and hand
computations; the values the report derives from records (robustness areas, corruption errors
relative to clean, the selected-epoch count of the pre-synth. column); and the claims,
area and corruption tables built from hand-made records."""

import json
import math
import sys

import numpy as np
import pytest
from conftest import run_command
from scipy import stats as scipy_stats

from tsynd_tf.report.stats import (
    format_mean_std,
    format_p,
    holm,
    mean_std,
    minimal_detectable_difference,
    normalised_area,
    p_is,
    paired_test,
)

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
    assert one == {"n": 1, "mean": pytest.approx(0.2), "sd": None, "ci": None, "t_p": None,
                   "wilcoxon_p": None, "mdd": None}
    none = paired_test({0: 0.8}, {1: 0.6})
    assert none["n"] == 0 and math.isnan(none["mean"]) and none["t_p"] is None
    # All differences equal: no t-test (zero variance), Wilcoxon still defined.
    equal = paired_test({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.6})
    assert equal["t_p"] is None and equal["ci"] is None
    assert equal["sd"] == 0.0 and equal["mdd"] is None
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
    code = ("import sys, tsynd_tf.report.stats, tsynd_tf.report.tables, "
            "tsynd_tf.report.figures, tsynd_tf.report.robust_tables, tsynd_tf.report.comparison, "
            "tsynd_tf.report.amount_cas; "
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
    # Trained on synthetic images alone, from the first epoch: nothing real-only to predate.
    for cell in cells:
        cell["flags"] = {"initial_epochs": 3, "train_on": "synthetic"}
    assert records.pre_synthetic_counts(config, "tsynd_mi") == "–"


# ----------------------------------------------------------------------------- detectable Δ


def test_minimal_detectable_difference_has_the_power_it_claims():
    """Simulated paired studies with a true mean difference of the MDD: the two-sided t-test
    at α=0.05 rejects in 80% of them."""
    n, sd = 5, 0.02
    mdd = minimal_detectable_difference(n, sd)
    differences = np.random.default_rng(0).normal(mdd, sd, size=(20000, n))
    p = scipy_stats.ttest_1samp(differences, 0.0, axis=1).pvalue
    assert np.mean(p < 0.05) == pytest.approx(0.8, abs=0.02)
    # Half the MDD is detected far less often: the power curve is not flat.
    half = scipy_stats.ttest_1samp(differences - mdd / 2, 0.0, axis=1).pvalue
    assert np.mean(half < 0.05) < 0.4


def test_minimal_detectable_difference_limits():
    # Many pairs: the normal approximation (z_0.975 + z_0.8) * sd / sqrt(n).
    z = scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)
    assert minimal_detectable_difference(2000, 0.05) == pytest.approx(
        z * 0.05 / math.sqrt(2000), rel=0.01)
    # Proportional to sd; undefined with one pair or no spread.
    assert minimal_detectable_difference(5, 0.04) == pytest.approx(
        2 * minimal_detectable_difference(5, 0.02))
    for n, sd in ((1, 0.1), (0, 0.1), (5, 0.0), (5, None), (5, math.nan)):
        assert minimal_detectable_difference(n, sd) is None, (n, sd)


def test_paired_test_returns_the_spread_and_detectable_difference():
    a, b = PAIRS[0]
    diff = np.array([a[s] - b[s] for s in sorted(a)])
    result = paired_test(a, b)
    assert result["sd"] == pytest.approx(diff.std(ddof=1), rel=1e-12)
    assert result["mdd"] == pytest.approx(minimal_detectable_difference(5, result["sd"]))
    # The MDD exceeds the CI's half-width: 80% power needs more than reaching significance.
    assert result["mdd"] > (result["ci"][1] - result["ci"][0]) / 2


# ----------------------------------------------------------------------------- areas


def test_normalised_area_by_hand():
    # Evenly spaced: (0.1 (0.8 + 0.6) / 2 + 0.1 (0.6 + 0.4) / 2) / 0.2 = (0.07 + 0.05) / 0.2.
    assert normalised_area({0.0: 0.8, 0.1: 0.6, 0.2: 0.4}) == pytest.approx(0.6)
    # Uneven, given out of order: (0.05 x 0.8 + 0.15 x 0.6) / 0.2 = 0.13 / 0.2.
    assert normalised_area({0.2: 0.5, 0.0: 0.9, 0.05: 0.7}) == pytest.approx(0.65)
    assert normalised_area({0.0: 0.7, 0.004: 0.7, 0.016: 0.7}) == pytest.approx(0.7)  # flat
    assert normalised_area({0.0: 0.9, 0.01: 0.5}) == pytest.approx(0.7)
    for points in ({}, {0.0: 0.7}):
        with pytest.raises(ValueError, match="two different strengths"):
            normalised_area(points)


def cell(method: str, seed: int, metrics: dict, training: dict | None = None) -> dict:
    """A results line with what records.Config reads."""
    return {"cell": f"c_{method}_s{seed}", "run_dir": "/nonexistent", "config": "c",
            "method": method, "seed": seed, "dataset": "d", "train_count": 8,
            "train_fraction": 0.1, "training": {"num_labelled": 8, **(training or {})},
            "metrics": metrics}


# Clean 0.8 / balanced 0.7; Gaussian σ=0 (ignored: the clean value stands at 0), 0.1, 0.2;
# FGSM ε=0.01; PGD ε=0.01, 0.03.
ATTACKED = {"test/acc": 0.8, "test/balanced_acc": 0.7,
            "gaussian_0/acc": 0.1, "gaussian_0/balanced_acc": 0.1,
            "gaussian_0.1/acc": 0.6, "gaussian_0.1/balanced_acc": 0.6,
            "gaussian_0.2/acc": 0.4, "gaussian_0.2/balanced_acc": 0.5,
            "fgsm_0.01/acc": 0.6, "fgsm_0.01/balanced_acc": 0.5,
            "pgd_0.01/acc": 0.5, "pgd_0.01/balanced_acc": 0.5,
            "pgd_0.03/acc": 0.2, "pgd_0.03/balanced_acc": 0.5}


def test_config_areas_by_hand(tmp_path):
    from tsynd_tf.report.records import ROBUST_AREA, Config

    old = {k: v for k, v in ATTACKED.items() if not k.startswith("pgd_") or "/acc" in k}
    config = Config("c", [cell("m", 0, ATTACKED), cell("m", 1, old)], tmp_path)
    # Accuracy, Gaussian: strengths 0, 0.1, 0.2 with 0.8, 0.6, 0.4 -> 0.6 (σ=0's 0.1 unused).
    assert config.values("m", "area/acc/gaussian") == pytest.approx({0: 0.6, 1: 0.6})
    assert config.values("m", "area/acc/fgsm") == pytest.approx({0: 0.7, 1: 0.7})
    # PGD: (0.01 (0.8 + 0.5) / 2 + 0.02 (0.5 + 0.2) / 2) / 0.03 = (0.0065 + 0.007) / 0.03.
    assert config.values("m", "area/acc/pgd") == pytest.approx({0: 0.45, 1: 0.45})
    # Balanced: Gaussian (0.1 x 0.65 + 0.1 x 0.55) / 0.2 = 0.6, FGSM 0.6,
    # PGD (0.01 x 0.6 + 0.02 x 0.5) / 0.03 = 0.016 / 0.03; seed 1 has no balanced PGD.
    assert config.values("m", "area/balanced_acc/gaussian") == pytest.approx({0: 0.6, 1: 0.6})
    assert config.values("m", "area/balanced_acc/pgd") == pytest.approx({0: 0.016 / 0.03})
    # The claim: the mean over the three families, only where a seed has all of them.
    assert config.values("m", ROBUST_AREA) == pytest.approx(
        {0: (0.6 + 0.6 + 0.016 / 0.03) / 3})
    assert config.values("m", "area/acc") == pytest.approx({0: (0.6 + 0.7 + 0.45) / 3,
                                                            1: (0.6 + 0.7 + 0.45) / 3})
    # No attacks at all: no areas, no crash.
    clean = Config("c", [cell("m", 0, {"test/acc": 0.8, "test/balanced_acc": 0.7})], tmp_path)
    assert clean.values("m", ROBUST_AREA) == {} and clean.values("m", "area/acc/pgd") == {}


# Corruptions: pixelate and jpeg_compression (an underscore in the name) at severities 1, 2.
CORRUPTED = {"test/acc": 0.8, "test/balanced_acc": 0.75,
             "corruption/pixelate_1/balanced_acc": 0.70,
             "corruption/pixelate_2/balanced_acc": 0.55,
             "corruption/jpeg_compression_1/balanced_acc": 0.75,
             "corruption/jpeg_compression_2/balanced_acc": 0.65,
             "corruption/pixelate/balanced_error": 0.375,
             "corruption/mean_balanced_error": 0.3375}


def test_config_corruption_errors_relative_to_clean_by_hand(tmp_path):
    from tsynd_tf.report.records import CORRUPTION_VS_CLEAN as KEY
    from tsynd_tf.report.records import Config, corruption_names

    partial = {k: v for k, v in CORRUPTED.items() if "jpeg_compression_2" not in k}
    records = [cell("m", 0, CORRUPTED), cell("m", 1, partial), cell("m", 2, ATTACKED)]
    assert corruption_names(records) == {"jpeg_compression": [1, 2], "pixelate": [1, 2]}
    config = Config("c", records, tmp_path)
    # Clean balanced error 0.25; pixelate errors 0.30, 0.45 -> +0.05, +0.20.
    assert config.values("m", f"{KEY}/pixelate/2") == pytest.approx({0: 0.20, 1: 0.20})
    assert config.values("m", f"{KEY}/pixelate") == pytest.approx({0: 0.125, 1: 0.125})
    # jpeg_compression: 0.0, +0.10 -> 0.05; seed 1 lacks severity 2, seed 2 all corruptions.
    assert config.values("m", f"{KEY}/jpeg_compression") == pytest.approx({0: 0.05})
    # Mean over corruptions = the evaluation's mean_balanced_error minus the clean error.
    assert config.values("m", KEY) == pytest.approx({0: 0.3375 - 0.25})


# ----------------------------------------------------------------------------- tables


def claims_config(tmp_path, end_seeds=(0, 1, 2)):
    """baseline and tsynd_mi over 4 seeds, the end of training recorded for `end_seeds`:
    tsynd_mi wins ACC by 0.10 ± noise when selected, and by little at the end of training."""
    from tsynd_tf.report.records import Config

    records = []
    for seed, (noise, end) in enumerate(((0.01, 0.01), (-0.01, -0.03), (0.02, 0.02),
                                         (0.0, 0.01))):
        for method, gain in (("baseline", 0.0), ("tsynd_mi", 1.0)):
            metrics = {"test/acc": 0.7 + gain * (0.1 + noise), "test/auc": 0.8 + 0.01 * seed,
                       "test/balanced_acc": 0.6, "fgsm_0.01/balanced_acc": 0.5 + gain * noise}
            last = ({"last/test/acc": 0.7 + gain * end, "last/test/auc": 0.8}
                    if seed in end_seeds else {})
            records.append(cell(method, seed, metrics, last))
    return Config("c", records, tmp_path)


def table_rows(lines: list[str], first: str) -> list[list[str]]:
    """The cells of the table rows of a section whose first cell starts with `first`."""
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in "\n".join(lines).splitlines() if line.startswith(f"| {first}")]


def test_claims_table_adds_the_end_of_training_view(tmp_path):
    from tsynd_tf.report.tables import claims_section

    config = claims_config(tmp_path)
    lines = claims_section([config])
    rows = [r for r in table_rows(lines, "") if r[0].startswith(("more", "higher"))]
    assert [(r[0], r[1]) for r in rows] == [
        ("more accurate with few labels", "best on val."),
        ("more accurate with few labels", "end of training"),
        ("higher AUC with few labels", "best on val."),  # AUC differences all 0: no test
        ("higher AUC with few labels", "end of training"),
        ("more robust to noise and attacks", "best on val.")]  # best on validation only
    by = {(r[0][:6], r[1]): r for r in rows}
    # End of training, seeds 0-2: differences 0.01, -0.03, 0.02 -> mean 0, not shown, with
    # the MDD of 3 pairs at their sd, in the mean's 3 decimals; the Holm family has 3 tests.
    end = by[("more a", "end of training")]
    sd = float(np.std([0.01, -0.03, 0.02], ddof=1))
    assert end[4] == "3" and end[5] == "+0.000"
    assert end[8] == f"not shown; detectable: ≥ {minimal_detectable_difference(3, sd):.3f}"
    selected = by[("more a", "best on val.")]
    p = scipy_stats.ttest_1samp([0.11, 0.09, 0.12, 0.10], 0.0).pvalue
    robust = scipy_stats.ttest_1samp([0.01 * 0.5, -0.01 * 0.5, 0.02 * 0.5, 0.0], 0.0).pvalue
    adjusted = holm([p, scipy_stats.ttest_1samp([0.01, -0.03, 0.02], 0.0).pvalue, robust])
    assert selected[6] == format_p(p) and selected[7] == format_p(adjusted[0])
    assert selected[8] == "**holds**"
    assert by[("higher", "best on val.")][8].startswith("no test")
    assert "6 of 8 cells record it" in "\n".join(lines)


def test_claims_table_without_end_of_training_cells(tmp_path):
    from tsynd_tf.report.tables import claims_section

    lines = claims_section([claims_config(tmp_path, end_seeds=())])
    assert not [line for line in lines if "| end of training |" in line]
    assert "No cell records it yet (0 of 8" in "\n".join(lines)


def test_area_and_corruption_tables(tmp_path):
    from tsynd_tf.report.records import Config
    from tsynd_tf.report.robust_tables import area_section, corruption_section

    config = Config("c", [cell("baseline", 0, {**ATTACKED, **CORRUPTED}),
                          cell("baseline", 1, {**ATTACKED, **CORRUPTED, "test/acc": 0.88})],
                    tmp_path)
    areas = area_section(config)
    assert table_rows(areas, "method")[0] == [
        "method", "Gaussian ACC", "Gaussian bal. ACC", "FGSM ACC", "FGSM bal. ACC", "PGD ACC",
        "PGD bal. ACC", "mean bal. ACC"]
    # Clean ACC 0.8 (seed 0) and 0.88 (seed 1), clean balanced ACC 0.75 (CORRUPTED's):
    gaussian = [0.6, (0.1 * (0.88 + 0.6) / 2 + 0.1 * (0.6 + 0.4) / 2) / 0.2]  # 0.62
    fgsm = [0.7, (0.88 + 0.6) / 2]  # 0.74
    pgd = [0.45, (0.01 * (0.88 + 0.5) / 2 + 0.02 * (0.5 + 0.2) / 2) / 0.03]  # 0.4633
    balanced = [(0.1 * (0.75 + 0.6) / 2 + 0.1 * (0.6 + 0.5) / 2) / 0.2,  # 0.6125
                (0.75 + 0.5) / 2,  # 0.625
                (0.01 * (0.75 + 0.5) / 2 + 0.02 * 0.5) / 0.03]  # 0.5417
    assert table_rows(areas, "`baseline`")[0] == [
        "`baseline`", *(format_mean_std(v) for v in (
            gaussian, [balanced[0]] * 2, fgsm, [balanced[1]] * 2, pgd, [balanced[2]] * 2,
            [np.mean(balanced)] * 2))]
    assert table_rows(areas, "`baseline`")[0][1] == "0.610 ± 0.014"
    corruptions = corruption_section(config)
    assert table_rows(corruptions, "`pixelate`")[0] == ["`pixelate`", "0.125 ± 0.000"]
    assert table_rows(corruptions, "**mean**")[0] == ["**mean**", "0.087 ± 0.000"]
    assert table_rows(corruptions, "`jpeg_compression`")[1] == [
        "`jpeg_compression`", "+0.000", "+0.100"]  # per severity
    assert "2 of 2 cells evaluated every corruption" in "\n".join(corruptions)
    plain = Config("c", [cell("baseline", 0, {"test/acc": 0.8})], tmp_path)
    assert area_section(plain) == [] and corruption_section(plain) == []


def test_header_counts_the_cells_of_each_machine_type():
    """Cells that ran on another instruction set differ in the last digits; the header says
    how many ran where, and counts lines from before cells recorded it apart."""
    from tsynd_tf import machine
    from tsynd_tf.report.records import machine_types

    here = machine.describe()
    assert here["instruction_set"] in {name for _, name in machine.INSTRUCTION_SETS} | {
        "x86_64", "aarch64"}
    other = {**here, "instruction_set": "AVX-512+BF16"} if here["instruction_set"] != (
        "AVX-512+BF16") else {**here, "instruction_set": "AVX2"}
    records = [{"machine": here}, {"machine": here}, {"machine": other}, {}]
    assert machine_types(records) == {machine.machine_type(here): 2,
                                      machine.machine_type(other): 1, "not recorded": 1}
