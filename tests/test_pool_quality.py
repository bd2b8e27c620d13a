"""Pool quality (tsynd_tf.reference) and how much synthetic data a run uses: every pool of a
generating method measured against the training split in a cached reference classifier's
features; --synthetic_multiple; --train_on=synthetic (the Classification Accuracy Score)."""

import dataclasses
import logging

import numpy as np
import pytest

from tsynd_tf import data


def breast_config(tmp_path, medmnist_dir, **overrides):
    from tsynd_tf.config import TrainConfig

    return TrainConfig(**{**dict(
        dataset="breastmnist", train_count=40, ae_epochs=1, initial_epochs=1, rounds=2,
        epochs_per_round=1, num_samples=2, export_dir="", verbose=0, method="augment",
        data_dir=str(medmnist_dir), output_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache")), **overrides})


# breast and breast_meter (conftest): BreastMNIST, and its default reference trained once per
# session into an empty model cache of its own (the meter's record is that first training's).


def test_real_images_score_better_than_noise_in_the_reference_features(breast, breast_meter):
    from tsynd_tf import reference

    meter, cache_dir = breast_meter
    assert meter.record["loaded"] is False and meter.record["val_acc"] > 0.7
    assert meter.record["recipe"] == reference.DEFAULT_RECIPE
    real = meter.measure(breast.test)
    noise = meter.measure(data.Split(
        np.random.default_rng(0).integers(0, 256, breast.test.images.shape, np.uint8),
        breast.test.targets))
    assert real["fid"] < noise["fid"] / 5 and real["kid"] < noise["kid"]
    assert real["precision"] > 0.5 > noise["precision"]
    assert real["label_fidelity"] > 0.7
    assert 0.5 < real["diversity"] < 1.5  # test images are as diverse as training images
    assert meter.measure(breast.test) == real  # the default reference's features are not samples
    assert reference.PoolQuality(breast, cache_dir).record["loaded"] is True  # cached


def test_memorisation_counts_copies_of_training_images_and_few_held_out_ones(breast,
                                                                             breast_meter):
    meter, _ = breast_meter
    copies = meter.measure(breast.train.subset(np.arange(0, len(breast.train), 3)))
    assert copies["memorisation_pixels"] == copies["memorisation_features"] == 1.0
    # The threshold is the validation images' 5th percentile: 4 of BreastMNIST's 78.
    held_out = meter.measure(breast.val)
    assert held_out["memorisation_pixels"] == held_out["memorisation_features"] == 4 / 78
    test = meter.measure(breast.test)  # new images too, but not the threshold's own
    assert test["memorisation_pixels"] < 0.15 and test["memorisation_features"] < 0.15
    half = meter.measure(data.Split(
        np.concatenate([breast.train.images[:78], breast.val.images]),
        np.concatenate([breast.train.targets[:78], breast.val.targets])))
    assert half["memorisation_pixels"] == pytest.approx((78 + 4) / 156)


def test_a_class_of_repeated_images_is_collapsed_and_real_images_are_not(breast,
                                                                         breast_meter):
    from tsynd_tf import reference

    meter, _ = breast_meter
    names = list(breast.info.class_names)
    val = meter.measure(breast.val)
    assert reference.collapsed_classes(val) == []
    assert all(value > reference.COLLAPSE_THRESHOLD + 0.1
               for key, value in val.items() if key.startswith("nearest_diversity/"))
    labels = breast.val.targets.argmax(1)
    for k in (1, 5):  # k distinct validation images of each class, each repeated 12 times
        chosen = np.concatenate([np.flatnonzero(labels == c)[:k] for c in range(2)])
        repeats = breast.val.subset(np.repeat(chosen, 12))
        measured = meter.measure(repeats)
        assert reference.collapsed_classes(measured) == names
        assert measured[f"nearest_diversity/{names[0]}"] == 0.0
    # One class repeated, the other real: only the repeated one is named.
    benign = np.flatnonzero(labels == 1)
    mixed = breast.val.subset(np.concatenate([np.repeat(np.flatnonzero(labels == 0)[:1], 20),
                                              benign]))
    assert reference.collapsed_classes(meter.measure(mixed)) == [names[0]]


def test_per_class_numbers_find_the_one_class_that_is_poor(breast, breast_meter):
    meter, _ = breast_meter
    names = list(breast.info.class_names)
    real = meter.measure(breast.test)
    for name in names:
        assert real[f"precision/{name}"] > 0.5 and real[f"recall/{name}"] > 0.5
    # The malignant test images replaced by noise: the overall numbers fall a little, the
    # malignant class's to nothing, the benign class's not at all.
    images, labels = breast.test.images.copy(), breast.test.targets.argmax(1)
    malignant = labels == names.index("malignant")
    images[malignant] = np.random.default_rng(0).integers(0, 256, images[malignant].shape,
                                                          np.uint8)
    poor = meter.measure(data.Split(images, breast.test.targets))
    assert poor["precision/malignant"] < 0.1 and poor["recall/malignant"] < 0.1
    assert poor["precision"] > poor["precision/malignant"] + 0.3
    benign = "normal, benign"
    for key in ("precision", "recall", "label_fidelity"):
        assert poor[f"{key}/{benign}"] == real[f"{key}/{benign}"]


def test_an_unknown_reference_recipe_is_refused_before_training(breast, tmp_path):
    from tsynd_tf import reference

    with pytest.raises(ValueError, match="Unknown reference recipe 'vgg'"):
        reference.PoolQuality(breast, str(tmp_path), recipe="vgg")
    assert not list(tmp_path.iterdir())


def test_every_pool_of_a_generating_run_is_measured(tmp_path, medmnist_dir, caplog,
                                                   breast_meter):
    from tsynd_tf import reference, run_parts, training
    from tsynd_tf.runs import RunDir

    # The run's cache is breast_meter's: its reference (the same dataset and recipe) is
    # loaded, not trained again (the training is what the first test checks).
    config = breast_config(tmp_path, medmnist_dir, synthetic_multiple=3,
                           cache_dir=breast_meter[1])
    with caplog.at_level(logging.WARNING, logger="tsynd_tf"):
        results = training.Trainer(
            run_parts.assemble(config, RunDir(config.output_dir))).run()
    assert results["num_synthetic"] == 3 * 40 and results["pool_size"] == 60
    measured = RunDir(config.output_dir).read_quality()
    assert [r["num_images"] for r in measured["rounds"]] == [60, 60]
    assert measured["all"]["num_images"] == 120 and measured["labelled"]["num_images"] == 40
    assert results["quality/fid"] == measured["all"]["fid"] > 0
    assert 0 <= results["quality/precision"] <= 1 and 0 <= results["quality/recall"] <= 1
    assert measured["reference"]["settings"]["dataset"] == "breastmnist"
    assert measured["reference"]["loaded"] is True  # breast_meter's, from the cache
    # The labelled images are training images: all memorised, in pixels and in features.
    assert measured["labelled"]["memorisation_pixels"] == 1.0
    assert measured["labelled"]["memorisation_features"] == 1.0
    assert 0 <= results["quality/memorisation_pixels"] <= 1
    # The collapse check: per class in every measurement, the collapsed classes named in
    # quality.json and counted in the results, a warning naming them.
    assert {"nearest_diversity/malignant", "nearest_diversity/normal, benign"} <= set(
        measured["all"])
    assert results["quality/collapsed_classes"] == len(measured["collapsed_classes"])
    assert measured["collapsed_classes"] == reference.collapsed_classes(measured["all"])
    assert ("closer to each other than real images" in caplog.text) == bool(
        measured["collapsed_classes"])

    baseline = dataclasses.replace(config, method="baseline", output_dir=str(tmp_path / "b"))
    baseline_results = training.Trainer(
        run_parts.assemble(baseline, RunDir(baseline.output_dir))).run()
    assert "quality/fid" not in baseline_results
    assert RunDir(baseline.output_dir).read_quality() is None

    # The report's quality table: the pools' memorisation from the results, the floor's
    # (the labelled images, all training images) from quality.json.
    table = quality_table({"augment": (config, results),
                           "baseline": (baseline, baseline_results)}, tmp_path)
    header, augment_row, floor_row = table[0], table[2], table[3]
    assert header[-2:] == ["memorised (pixels)", "memorised (features)"]
    assert augment_row[-2] == f"{results['quality/memorisation_pixels']:.4g}"
    # Its gain, paired by seed, in the key an evaluation writes (results.jsonl's metrics).
    assert augment_row[2] == f"{results['test/auc'] - baseline_results['test/auc']:+.3f} (n=1)"
    assert floor_row[0].startswith("real labelled") and floor_row[-2:] == ["1", "1"]


def quality_table(runs: dict, tmp_path) -> list[list[str]]:
    """The quality section's table for a config of these runs (method -> config, results),
    as rows of cells."""
    from tsynd_tf.report import quality_tables, records

    cells = [{"cell": method, "run_dir": config.output_dir, "dataset": config.dataset,
              "train_count": config.train_count, "train_fraction": config.train_fraction,
              "method": method, "seed": 0, "training": results,
              "metrics": {"test/auc": results["test/auc"]}}
             for method, (config, results) in runs.items()]
    lines = quality_tables.quality_section(
        [records.Config("breast", cells, tmp_path / "no_sweep")])
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in "\n".join(lines).splitlines() if line.startswith("|")]


def test_synthetic_only_training_sees_no_real_training_image(tmp_path, medmnist_dir,
                                                              monkeypatch):
    from tsynd_tf import run_parts, training
    from tsynd_tf.runs import RunDir

    seen = []
    original = training.classifier_batches

    def recording(real, synthetic, *args, **kwargs):
        seen.append((real.images, synthetic))
        return original(real, synthetic, *args, **kwargs)

    monkeypatch.setattr(training, "classifier_batches", recording)
    config = breast_config(tmp_path, medmnist_dir, train_on="synthetic", pool_quality=False)
    trainer = training.Trainer(run_parts.assemble(config, RunDir(config.output_dir)))
    results = trainer.run()
    pools = [RunDir(config.output_dir).read_pool(r)["images"] for r in range(2)]
    assert len(seen) == 1 and seen[0][1] is None  # one stage, no second (real) part
    np.testing.assert_array_equal(seen[0][0], np.concatenate(pools))
    assert results["classifier_epochs"] == 3 and 0 <= results["test/acc"] <= 1
    assert results["num_synthetic"] == 5 * 40


@pytest.mark.parametrize("settings, message", [
    ({"method": "tsynd_mi"}, "reads the classifier it trains"),
    ({"method": "baseline"}, "makes none"),
    ({"rounds": 0}, "needs --rounds >= 1"),
])
def test_synthetic_only_training_refuses_what_it_cannot_do(settings, message):
    from tsynd_tf import synthesis
    from tsynd_tf.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=message):
        synthesis.check_config(
            TrainConfig(**{"train_on": "synthetic", "method": "augment", **settings}))


def test_a_run_recorded_with_pool_fraction_resumes_as_the_same_amount():
    from tsynd_tf.config import TrainConfig

    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "synthetic_multiple"}
    old.update(pool_fraction=1.0, rounds=5)
    assert TrainConfig.from_dict(old).synthetic_multiple == 5.0
    TrainConfig().check_resumable(old, "run")  # 1.0 per round x 5 rounds = the default
    with pytest.raises(Exception, match="synthetic_multiple"):
        TrainConfig(synthetic_multiple=2.0).check_resumable(old, "run")


def test_a_run_recorded_with_a_numeric_synthetic_ratio_resumes_as_the_same_share():
    from tsynd_tf.config import TrainConfig

    old = {**TrainConfig().to_dict(), "synthetic_ratio": 0.5}  # a number before "proportional"
    TrainConfig().check_resumable(old, "run")
    with pytest.raises(Exception, match="synthetic_ratio"):
        TrainConfig(synthetic_ratio="proportional").check_resumable(old, "run")


def test_a_proportional_share_follows_the_amount_as_the_pools_grow(breast, tmp_path,
                                                                   medmnist_dir):
    """--synthetic_ratio=proportional: each batch holds the synthetic images' share of all
    training images, as if they were added to the dataset; a number holds whatever the amount."""
    from tsynd_tf.data.pipeline import classifier_batches, synthetic_per_batch

    proportional = breast_config(tmp_path, medmnist_dir, synthetic_ratio="proportional")
    real = breast.train.subset(np.arange(40))
    for pooled, expected in ((40, 32), (200, 53), (400, 58)):  # m = 1, 5, 10 at batch 64
        assert synthetic_per_batch(proportional, len(real), pooled) == expected
        assert synthetic_per_batch(breast_config(tmp_path, medmnist_dir), 40, pooled) == 32
    # The batches are built with that share: the synthetic images are told apart by label.
    pooled = breast.train.subset(np.arange(40, 240))
    synthetic = data.Split(pooled.images, np.zeros_like(pooled.targets))
    images, targets = next(iter(classifier_batches(real, synthetic, proportional, seed=0)))
    assert images.shape[0] == 64 and int((np.asarray(targets).sum(1) == 0).sum()) == 53
