"""The comparison's sections of the report (tsynd_tf.report.comparison and amount_cas) from
hand-made result lines: the answer table's differences, intervals and Holm family, per-class
recall, the amount curve, the synthetic-only table and Spearman's rho of quality with gain,
each checked against scipy or a hand computation."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tsynd_tf.report.records import Config
from tsynd_tf.report.stats import holm, spearman

SEEDS = range(5)
NOISE = (0.004, -0.002, 0.001, -0.003, 0.0)  # per seed: the spread of a paired difference


def line(config: str, method: str, seed: int, auc: float, bal: float, *, flags=None,
         training=None, metrics=None, num_labelled=100) -> dict:
    """A results line as tsynd_tf.experiment writes it, with what the sections read."""
    return {"cell": f"{config}_{method}_s{seed}", "run_dir": "/nonexistent", "config": config,
            "method": method, "seed": seed, "dataset": "d", "train_count": 0,
            "train_fraction": 0.1, "seconds": {"train": 60.0, "evaluate": 30.0},
            "flags": {"train_on": "real+synthetic", "synthetic_multiple": 5.0,
                      "synthetic_ratio": "0.5", **(flags or {})},
            "training": {"num_labelled": num_labelled, "last/test/auc": auc - 0.01,
                         "last/test/balanced_acc": bal, **(training or {})},
            "metrics": {"test/auc": auc, "test/balanced_acc": bal, **(metrics or {})}}


def config_of(name: str, gains: dict, tmp_path, **kwargs) -> Config:
    """baseline (AUC 0.90 + 0.01 * seed) and methods whose AUC is the baseline's plus
    gain + NOISE[seed]; balanced accuracy 0.7 for all."""
    records = []
    for seed in SEEDS:
        records.append(line(name, "baseline", seed, 0.90 + 0.01 * seed, 0.7, **kwargs))
        for method, gain in gains.items():
            records.append(line(name, method, seed, 0.90 + 0.01 * seed + gain + NOISE[seed],
                                0.7, **kwargs))
    return Config(name, records, tmp_path)


def rows_of(lines: list[str], first: str) -> list[list[str]]:
    return [[c.strip() for c in row.strip("|").split("|")]
            for row in "\n".join(lines).splitlines() if row.startswith(f"| {first}")]


def test_answer_table_pairs_by_seed_and_corrects_over_the_whole_table(tmp_path):
    from tsynd_tf.report.comparison import answer_section, answer_tests

    # big's classifiers are picked after the first synthetic pool (epoch 25 of 20 initial
    # ones), small's before it: the pre-synth. column counts the latter.
    big = config_of("big", {"gan": 0.05, "augment": 0.003}, tmp_path,
                    flags={"initial_epochs": 20}, training={"selected_epoch": 25})
    small = config_of("small", {"gan": 0.0}, tmp_path,
                      flags={"initial_epochs": 20}, training={"selected_epoch": 4})
    tests = answer_tests([big, small])
    # 3 (config, method) rows x 2 views x 2 metrics; balanced accuracy never differs (no
    # test), AUC at the best and at the end of training: 6 defined tests in the family.
    assert len(tests) == 12
    defined = [t for t in tests if t["t_p"] is not None]
    assert len(defined) == 6
    x = np.array([0.05 + n for n in NOISE])
    p = scipy_stats.ttest_1samp(x, 0.0).pvalue
    gan = next(t for t in tests if t["config"] is big and t["method"] == "gan"
               and t["metric"] == "AUC" and t["view"] == "best on val.")
    assert gan["mean"] == pytest.approx(x.mean()) and gan["t_p"] == pytest.approx(p)
    assert gan["holm_p"] == pytest.approx(holm([t["t_p"] for t in defined])[
        defined.index(gan)])
    lines = answer_section([big, small])
    row = rows_of(lines, "`big` | `gan`")[0]
    low, high = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert row[3] == "0/5"
    assert row[4] == f"**{x.mean():+.3f} [{low:+.3f}, {high:+.3f}]**"  # significant after Holm
    assert row[5] == "+0.000"  # balanced accuracy: equal everywhere, no interval
    assert rows_of(lines, "`small` | `gan`")[0][3] == "5/5"
    assert "2 of 6 differences from the baseline are significant" in "\n".join(lines)


def test_per_class_recall_shows_the_change_from_the_baseline(tmp_path):
    from tsynd_tf.report.comparison import per_class_section

    records = [line("c", method, seed, 0.9, 0.7, metrics={
        "test/recall/normal": base + gain * (1 + seed), "test/recall/pneumonia": 0.95})
        for seed in SEEDS for method, base, gain in (("baseline", 0.5, 0.0),
                                                     ("diffusion", 0.5, 0.01))]
    lines = per_class_section([Config("c", records, tmp_path)])
    row = rows_of(lines, "`diffusion`")[0]
    values = [0.5 + 0.01 * (1 + s) for s in SEEDS]
    assert row[1] == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} (Δ +0.030)"
    assert row[2] == "0.950 ± 0.000 (Δ +0.000)"


def test_amount_curve_reads_the_amount_and_share_from_the_flags(tmp_path):
    from tsynd_tf.report.amount_cas import amount_curves, amount_section

    home = config_of("main", {"gan": 0.01}, tmp_path)
    amounts = [config_of(f"x{m}", {"gan": 0.002 * m}, tmp_path,
                         flags={"synthetic_multiple": float(m),
                                "synthetic_ratio": "proportional"}) for m in (1, 2, 10)]
    # Without a baseline of their own: the amount configs are read against main's.
    amounts = [Config(c.name, [r for r in c.records if r["method"] != "baseline"], tmp_path)
               for c in amounts]
    (found_home, points), = amount_curves([home, *amounts])
    assert found_home is home
    assert sorted(points) == [("gan", "0.5"), ("gan", "proportional")]
    assert sorted(points[("gan", "proportional")]) == [1.0, 2.0, 10.0]
    lines = amount_section([home, *amounts], tmp_path / "figures", tmp_path)
    row = rows_of(lines, "`gan` | proportional")[0]
    x = np.array([0.02 + n for n in NOISE])  # 10x: 0.002 * 10 over the baseline
    low, high = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert row[2:] == ["+0.002" + _ci(0.002), "+0.004" + _ci(0.004),
                       "", f"{x.mean():+.3f} [{low:+.3f}, {high:+.3f}]"]
    assert (tmp_path / "figures" / "amount_main.png").stat().st_size > 10_000


def _ci(gain: float) -> str:
    x = np.array([gain + n for n in NOISE])
    low, high = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    return f" [{low:+.3f}, {high:+.3f}]"


def test_synthetic_only_table_pairs_with_the_labelled_baseline_and_names_the_real_one(
        tmp_path):
    from tsynd_tf.report.amount_cas import cas_section

    home = config_of("main", {}, tmp_path)
    cas = config_of("cas", {"diffusion": -0.05}, tmp_path, flags={"train_on": "synthetic"},
                    training={"num_synthetic": 500})
    cas = Config("cas", cas.by_method("diffusion"), tmp_path)
    real = Config("real", [line("real", "baseline", s, 0.95, 0.8, num_labelled=480)
                           for s in SEEDS], tmp_path)
    too_small = Config("tiny", [line("tiny", "baseline", s, 0.5, 0.5, num_labelled=100)
                                for s in SEEDS], tmp_path)
    row, = rows_of(cas_section([home, cas, real, too_small]), "`cas`")
    x = np.array([-0.05 + n for n in NOISE])
    low, high = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert row[2:4] == ["5", "500"]
    assert row[6] == f"{x.mean():+.3f} [{low:+.3f}, {high:+.3f}]"
    assert row[7] == "0.950 ± 0.000 (`real`, 480)"


def test_spearman_matches_scipy_with_the_fieller_interval():
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [0.1, 0.3, 0.2, 0.5, 0.4, 0.7, 0.6]
    result = spearman(x, y)
    expected = scipy_stats.spearmanr(x, y)
    assert result["rho"] == pytest.approx(expected.statistic)
    assert result["p"] == pytest.approx(expected.pvalue)
    half = 1.96 * math.sqrt(1.06 / (7 - 3))
    assert result["ci"] == pytest.approx((math.tanh(math.atanh(result["rho"]) - half),
                                          math.tanh(math.atanh(result["rho"]) + half)))
    assert spearman([1, 2], [1, 2])["rho"] is None  # fewer than 3 points
    assert spearman([1, 2, 3, 4], [1, 1, 1, 1])["rho"] is None  # constant gain
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3])["ci"] is None  # interval from 5 points


def test_quality_gain_correlates_each_validated_metric_across_config_and_method(tmp_path):
    from tsynd_tf.report.amount_cas import quality_gain_points, quality_gain_section

    # Lower FID, more gain: rho -1 over the four (config, method) points.
    configs = []
    for name, gains in (("a", {"gan": 0.01, "diffusion": 0.03}),
                        ("b", {"gan": 0.02, "diffusion": 0.04})):
        config = config_of(name, gains, tmp_path)
        for r in config.records:
            if r["method"] != "baseline":
                fid = 10.0 - 100 * gains[r["method"]]
                r["training"].update({"quality/fid": fid, "quality/kid": fid,
                                      "quality/precision": 0.5, "quality/recall": 0.5})
        configs.append(config)
    points = quality_gain_points(configs, "fid", "test/auc")
    assert np.array(sorted(points)) == pytest.approx(np.array(
        [(6.0, 0.04), (7.0, 0.03), (8.0, 0.02), (9.0, 0.01)]))
    rows = rows_of(quality_gain_section(configs), "FID")
    assert rows[0][1:3] == ["4", "-1.00"]  # 4 points: no interval below 5
    assert rows_of(quality_gain_section(configs), "precision")[0][2] == "n/a"  # constant


def test_configs_of_one_subset_have_their_own_headings_and_robustness_columns(tmp_path):
    """The comparison sweep's amount and synthetic-only configs share the main config's
    labelled subset: the page tells their sections apart by their synthetic data, shows each
    config only the noise strengths its cells were evaluated at (the amount and CAS cells are
    evaluated clean only), and draws the fraction figure from the main configs."""
    import json

    from tsynd_tf.report.page import build_page
    from tsynd_tf.runs import SweepDir

    noisy = {"gaussian_0.05/acc": 0.6}
    main = config_of("main", {"gan": 0.01}, tmp_path, metrics=noisy)
    amount, more = [config_of(f"main_x{m}", {"gan": 0.01}, tmp_path,
                              flags={"synthetic_multiple": float(m),
                                     "synthetic_ratio": "proportional"}) for m in (2, 10)]
    cas = config_of("main_cas", {"gan": -0.05}, tmp_path, flags={"train_on": "synthetic"})
    subset = "d, 10% of the labels (100 images)"
    assert [c.label for c in (main, amount, cas)] == [
        subset, f"{subset}, ×2 synthetic, proportional share",
        f"{subset}, synthetic images only"]
    results = SweepDir(tmp_path / "sweep").results_file
    results.parent.mkdir(parents=True)
    results.write_text("".join(json.dumps(r) + "\n" for c in (more, main, amount, cas)
                               for r in c.records))
    page = build_page(tmp_path / "sweep", tmp_path / "RESULTS.md", tmp_path / "figures",
                      "t", model_figures=False)
    sections = {s.split("\n")[0]: s for s in page.split("\n### ")[1:]}
    for config in (main, amount, cas):
        assert f"Config `{config.name}`," in sections[config.label]
    # The amount curve's configs in the order of their amounts (x2 before x10).
    assert list(sections)[:4] == [main.label, cas.label, amount.label, more.label]
    assert "Gaussian σ=0.05" in sections[subset]
    assert "Accuracy under noise" not in sections[f"{subset}, synthetic images only"]
    assert "![accuracy vs fraction]" in page


def test_cost_has_a_row_per_machine_type_when_cells_ran_on_several(tmp_path):
    from tsynd_tf.report.cost import cost_section

    fast = {"cpu": "Xeon", "instruction_set": "AVX-512+BF16"}
    slow = {"cpu": "AMD EPYC", "instruction_set": "AVX2"}
    config = config_of("c", {"gan": 0.0}, tmp_path)
    for record in config.records:  # seeds 0-2 on the fast type, 3-4 on the slow one
        record["machine"] = fast if record["seed"] < 3 else slow
        record["seconds"] = {"train": 100.0 * (1 + record["seed"]), "evaluate": 10.0}
        if record["method"] == "gan":  # each cell trains its seed's generator
            record["training"].update(generator_seconds=100.0 + record["seed"],
                                      generator_loaded=False)
    # A cell on the slow type that loaded seed 0's generator, trained on the fast type.
    loader = config_of("c_x2", {"gan": 0.0}, tmp_path).by_method("gan")[0]
    loader["machine"] = slow
    loader["training"].update(generator_seconds=100.0, generator_loaded=True)
    lines = cost_section([config, Config("c_x2", [loader], tmp_path)])
    rows = rows_of(lines, "`c` | `gan`")
    assert [row[2:4] for row in rows] == [["AMD EPYC, AVX2", "2"], ["Xeon, AVX-512+BF16", "3"]]
    assert [row[-1] for row in rows] == ["460", "210"]  # medians of 410, 510 and 110, 210, 310
    assert [row[4] for row in rows] == ["104", "101"]  # 103, 104 and 100, 101, 102
    # The generator counts on the type that trained it, not in the loader's row.
    assert rows_of(lines, "`c_x2` | `gan`")[0][4] == "–"

    for record in config.records:
        record["machine"] = fast
    lines = cost_section([config])
    assert [row[2] for row in rows_of(lines, "`c` |")] == ["5", "5"]  # no machine column
    assert "All cells ran on one machine type" in "\n".join(lines)


def test_cost_leaves_out_cells_and_generators_clocked_in_a_timing_window(tmp_path):
    import json

    from tsynd_tf.cli import UsageError
    from tsynd_tf.report.cost import cost_section, read_timing_windows

    # One cell a minute from 10:00; gan's seed-s generator (100 s + 10 s x seed) is trained
    # by gan_s<s> and loaded by the cell of another method of the same seed ("more").
    config = config_of("c", {"gan": 0.0, "more": 0.0}, tmp_path)
    for minute, record in enumerate(config.records):
        record["started"] = f"2026-12-07T10:{minute:02d}:00+00:00"
        record["finished"] = f"2026-12-07T10:{minute:02d}:59+00:00"
        if record["method"] != "baseline":
            record["training"].update(generator_seconds=100.0 + 10 * record["seed"],
                                      generator_loaded=record["method"] == "more")
    [gan_s1] = [r for r in config.records if r["cell"] == "c_gan_s1"]
    gan_s1["seconds"]["train"] = 9000.0  # what a pause does to a cell's clock
    windows_file = tmp_path / "timing_windows.jsonl"
    windows_file.write_text(json.dumps({"start": gan_s1["started"],
                                        "end": "2026-12-07T10:04:30+00:00", "kind": "paused",
                                        "what": "a benchmark timed"}) + "\n")
    windows = read_timing_windows(tmp_path)
    lines = cost_section([config], windows)
    [gan] = rows_of(lines, "`c` | `gan`")
    [more] = rows_of(lines, "`c` | `more`")
    # gan_s1 (10:04) left out: 4 cells and their median 90 s, not 9,000; its generator (110 s)
    # is left out of gan's and of more_s1's rows: medians of 100, 120, 130, 140 (not 120).
    assert gan[2] == "4" and gan[-1] == "90" and gan[3] == "125"
    assert more[2] == "5" and more[3] == "125"
    assert "Left out of the medians: 1 cell whose clocks" in "\n".join(lines)
    assert "- 2026-12-07 10:04:00 to 10:04:30 UTC, paused (a benchmark timed): 1 cell" in lines

    # A cell that resumed a run: recorded as such, or (older lines) clocked fewer train
    # seconds than its training took, because that finished in an earlier attempt.
    [more_s3, more_s4] = [r for r in config.records if r["cell"] in ("c_more_s3", "c_more_s4")]
    more_s3["resumed"] = True
    more_s4["training"]["seconds_this_session"] = 61.0
    lines = cost_section([config], windows)
    assert rows_of(lines, "`c` | `more`")[0][2] == "3"
    assert ("- resumed a run that an earlier attempt began (their seconds count the last "
            "attempt only): 2 cells") in lines

    valid = windows_file.read_text()
    for bad in ('{"start": "2026-12-07T11:00:00"}', '{"start": "2026-12-07T11:00:00+00:00", '
                '"end": "2026-12-07T11:05:00+00:00", "kind": "paused"'):  # no end; not JSON
        windows_file.write_text(valid + bad + "\n")
        with pytest.raises(UsageError, match="timing_windows.jsonl, line 2: .* fix or delete"):
            read_timing_windows(tmp_path)
