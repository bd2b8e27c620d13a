"""tsynd_diffusion: the class-conditional diffusion model's DDIM samples steered up an
MC-dropout classifier's uncertainty, on real PneumoniaMNIST images and a trained classifier."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tsynd_tf import evaluation, models, uncertainty
from tsynd_tf.synthesis.diffusion_model import UncertaintyGuide

POOL = 64  # images per compared pool
MEASURE_SAMPLES = 100  # MC passes of the measurement (the guide itself uses --num_samples)


def build_run(config, method: str, root):
    from tsynd_tf import run_parts
    from tsynd_tf.runs import RunDir

    config = dataclasses.replace(config, method=method, output_dir=str(root / method))
    return run_parts.assemble(config, RunDir(root / method))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, medmnist_dir):
    """The run parts of `diffusion` (its generator briefly trained on 32 labelled images, into a
    model cache of this module's own) and of `tsynd_diffusion` on the same subset, fitted."""
    from tsynd_tf.config import TrainConfig

    root = tmp_path_factory.mktemp("targeted")
    config = TrainConfig(train_count=32, generator_steps=20, ddim_steps=5, num_samples=10,
                         export_dir="", verbose=0, data_dir=str(medmnist_dir),
                         cache_dir=str(root / "cache"))
    diffusion = build_run(config, "diffusion", root)
    diffusion.method.fit(diffusion.real, diffusion.dataset.train)
    targeted = build_run(config, "tsynd_diffusion", root)
    targeted.method.model.fit = None  # training the generator again would fail
    targeted.method.fit(targeted.real, targeted.dataset.train)
    return {"diffusion": diffusion, "tsynd_diffusion": targeted, "root": root}


def measured(classifier, images: np.ndarray) -> dict:
    """MC uncertainty of uint8 images with many passes, under masks of their own seed."""
    with evaluation.seeded_dropout(classifier, 12345):
        return uncertainty.mc_predict(classifier, tf.data.Dataset.from_tensor_slices(
            images.astype(np.float32) / 255).batch(POOL), MEASURE_SAMPLES)


def test_tsynd_diffusion_samples_the_generator_diffusion_trained(runs):
    trained, loaded = (runs[m].method for m in ("diffusion", "tsynd_diffusion"))
    assert trained.generator_record["loaded"] is False
    assert loaded.generator_record["loaded"] is True
    assert loaded.generator_record["settings"] == trained.generator_record["settings"]
    for got, want in zip(loaded.model.ema.get_weights(), trained.model.ema.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_guided_pools_are_more_uncertain_and_keep_their_labels(runs, trained_classifier):
    unguided = runs["diffusion"].method.pool(0, trained_classifier, POOL)
    states = [s.numpy() for s in models.seed_generator_states(trained_classifier)]
    guided = runs["tsynd_diffusion"].method.pool(0, trained_classifier, POOL)
    # Reading the classifier left its dropout state as it was.
    for state, before in zip(models.seed_generator_states(trained_classifier), states):
        np.testing.assert_array_equal(state.numpy(), before)
    before = measured(trained_classifier, unguided.images)["mutual_information"].mean()
    after = measured(trained_classifier, guided.images)["mutual_information"].mean()
    assert after > 1.5 * before, (before, after)
    # The same requested labels (one draw per round and seed), and they are the targets.
    np.testing.assert_array_equal(guided.targets, unguided.targets)
    np.testing.assert_array_equal(guided.targets.sum(1), 1.0)
    assert guided.images.dtype == np.uint8 and guided.images.shape == (POOL, 28, 28, 1)
    assert not np.array_equal(guided.images, unguided.images)
    # Diagnostics: every image's uncertainty under the classifier; a regenerated pool is equal.
    mi = guided.diagnostics["mutual_information"]
    assert mi.shape == (POOL,) and np.all(np.isfinite(mi)) and np.all(mi >= 0)
    assert guided.diagnostics["predictive_entropy"].shape == (POOL,)
    again = runs["tsynd_diffusion"].method.pool(0, trained_classifier, POOL)
    np.testing.assert_array_equal(again.images, guided.images)
    np.testing.assert_array_equal(again.diagnostics["mutual_information"], mi)


def test_entropy_guidance_raises_the_predictive_entropy(runs, trained_classifier):
    model = runs["diffusion"].method.model
    labels = np.arange(POOL) % 2
    guide = UncertaintyGuide(trained_classifier, "entropy", scale=0.3, every=1, num_samples=10)
    with evaluation.seeded_dropout(trained_classifier, 0):
        images = {name: (np.clip(model.sample(labels, 5, 1.0, seed=3, guide=g), 0, 1) * 255)
                  .round().astype(np.uint8) for name, g in (("guided", guide), ("plain", None))}
    before = measured(trained_classifier, images["plain"])["predictive_entropy"].mean()
    after = measured(trained_classifier, images["guided"])["predictive_entropy"].mean()
    assert after > 1.1 * before, (before, after)


def test_guidance_zero_is_the_diffusion_sampler_bit_for_bit(runs, trained_classifier):
    from tsynd_tf.synthesis.targeted_diffusion import TSynDDiffusion

    unguided = runs["diffusion"].method.pool(1, trained_classifier, POOL)
    context = runs["tsynd_diffusion"].method.context
    off = TSynDDiffusion(dataclasses.replace(context, config=dataclasses.replace(
        context.config, uncertainty_guidance=0.0)))
    off.fit(runs["tsynd_diffusion"].real, None)
    np.testing.assert_array_equal(off.pool(1, trained_classifier, POOL).images,
                                  unguided.images)
    model, labels = off.model, np.arange(8) % 2
    zero = UncertaintyGuide(trained_classifier, "mi", scale=0.0, every=1, num_samples=10)
    np.testing.assert_array_equal(model.sample(labels, 5, 1.0, seed=4, guide=zero),
                                  model.sample(labels, 5, 1.0, seed=4))


def test_strong_guidance_keeps_images_finite_and_in_range(runs, trained_classifier):
    model = runs["diffusion"].method.model
    strong = UncertaintyGuide(trained_classifier, "mi", scale=20.0, every=2, num_samples=10)
    images = model.sample(np.arange(16) % 2, 5, 1.0, seed=5, guide=strong)
    assert np.all(np.isfinite(images)) and images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 0.05  # not collapsed to a constant


def test_a_guide_refuses_impossible_settings(trained_classifier):
    with pytest.raises(ValueError, match="Unknown objective"):
        UncertaintyGuide(trained_classifier, "variance", scale=1.0, every=1, num_samples=10)
    with pytest.raises(ValueError, match="every >= 1"):
        UncertaintyGuide(trained_classifier, "mi", scale=1.0, every=0, num_samples=10)


def test_a_finished_run_has_pool_quality_with_mi_and_a_guidance_figure(runs, tmp_path,
                                                                        monkeypatch):
    """End to end: a tsynd_diffusion run (its generator from the cache) measures its pool
    next to the pool's MI, and the report's figure samples its generator both ways."""
    from tsynd_tf import reference
    from tsynd_tf import runs as run_dirs

    # The default reference trains ~30 min on PneumoniaMNIST on 2 cores; what is tested here
    # is the run's measuring, in any reference's features.
    monkeypatch.setattr(reference, "DEFAULT_RECIPE", "small_cnn")
    from tsynd_tf.report.guidance_figures import plot_guidance

    config = dataclasses.replace(
        runs["tsynd_diffusion"].config, output_dir=str(tmp_path / "run"), ae_epochs=1,
        initial_epochs=1, rounds=1, epochs_per_round=1, synthetic_multiple=1,
        pool_quality=True)
    from tsynd_tf import run_parts, training

    results = training.Trainer(run_parts.assemble(config, run_dirs.RunDir(tmp_path / "run"))
                               ).run()
    assert results["generator_loaded"] is True  # the fixture's generator, not retrained
    measured_pools = run_dirs.RunDir(tmp_path / "run").read_quality()
    assert measured_pools["rounds"][0]["num_images"] == 32
    assert measured_pools["rounds"][0]["mean_mi"] >= 0 and results["quality/fid"] >= 0

    summary = plot_guidance(run_dirs.load_run(tmp_path / "run"), "PneumoniaMNIST",
                            tmp_path / "guidance.png", count=3)
    assert (tmp_path / "guidance.png").stat().st_size > 1000
    assert set(summary) == {"unguided", "guided"}
    for mi, fidelity in summary.values():
        assert mi >= 0 and 0 <= fidelity <= 1
