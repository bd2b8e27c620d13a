"""gan: the class-conditional GAN method on real PneumoniaMNIST images - a run that trains it
briefly and writes its pool, the model cache, bad input and its recipes (bench.gan_recipes).
Mode collapse is checked for every method in tsynd_tf.reference (tests/test_pool_quality.py)."""

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import count_traces

from tsynd_tf import data
from tsynd_tf.synthesis.gan import GAN



def must_not_train():
    raise AssertionError("the GAN was trained, not loaded")


@pytest.fixture(scope="module")
def run(tmp_path_factory, medmnist_dir):
    """A finished `gan` run: 10 GAN steps on 32 labelled images, one round, its own cache."""
    from tsynd_tf import run_parts, training
    from tsynd_tf.config import TrainConfig
    from tsynd_tf.runs import RunDir

    root = tmp_path_factory.mktemp("gan")
    config = TrainConfig(
        method="gan", train_count=32, generator_steps=10, ae_epochs=1, initial_epochs=1,
        rounds=1, epochs_per_round=1, num_samples=2, export_dir="", verbose=0,
        data_dir=str(medmnist_dir), output_dir=str(root / "run"), cache_dir=str(root / "cache"),
        synthetic_multiple=1, pool_quality=False)
    parts = run_parts.assemble(config, RunDir(root / "run"))
    training.Trainer(parts).run()
    return parts


def test_a_gan_run_writes_a_pool_of_labelled_images_in_range(run):
    pool = run.run_dir.read_pool(0)
    assert pool["images"].shape == (32, 28, 28, 1) and pool["images"].dtype == np.uint8
    assert pool["images"].std() > 0  # not one constant image
    np.testing.assert_array_equal(pool["targets"].sum(1), 1.0)  # one-hot labels
    assert set(pool["targets"].argmax(1)) <= set(run.real.targets.argmax(1))
    record = run.run_dir.read_generator()
    assert record["loaded"] is False and record["settings"]["generator_steps"] == 10
    # A pool is seeded by its round: made again, the same; another round's, not.
    again = run.method.pool(0, run.classifier, 32)
    np.testing.assert_array_equal(again.images, pool["images"])
    assert not np.array_equal(run.method.pool(1, run.classifier, 32).images, pool["images"])


def test_pool_labels_follow_the_labelled_class_mix(run):
    pool = run.method.pool(0, run.classifier, 1000)
    assert pool.images.shape == (1000, 28, 28, 1)
    wanted = run.real.targets.mean(0)
    np.testing.assert_allclose(pool.targets.mean(0), wanted, atol=0.05)


def test_a_second_method_object_loads_the_cached_generator(run, caplog):
    again = GAN(run.method.context)
    again.train = lambda labelled: must_not_train()
    with caplog.at_level(logging.INFO, logger="tsynd_tf"):
        again.fit(run.real, run.dataset.train)
    assert again.generator_record["loaded"] and "loaded from the cache" in caplog.text
    for got, want in zip(again.model.ema.get_weights(), run.method.model.ema.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_a_corrupt_cached_generator_is_trained_again_to_the_same_weights(run, caplog):
    weights = Path(run.method.generator_record["entry"]) / "weights.weights.h5"
    saved = weights.read_bytes()
    try:
        weights.write_bytes(b"not an h5 file")
        again = GAN(run.method.context)
        traces = count_traces(again.model)
        with caplog.at_level(logging.WARNING, logger="tsynd_tf"):
            again.fit(run.real, run.dataset.train)
        assert "does not load" in caplog.text and not again.generator_record["loaded"]
        # Its optimizers' slots existed before the first step, which was therefore traced
        # once: tf.function traces a step that creates variables twice.
        assert len(traces) == 1
        # One seed, one generator: retraining on CPU gives the first training's weights.
        for got, want in zip(again.model.ema.get_weights(),
                             run.method.model.ema.get_weights()):
            np.testing.assert_array_equal(got, want)
    finally:
        weights.write_bytes(saved)


def test_a_class_without_labelled_images_is_refused_before_training(run):
    normal_only = run.real.subset(np.flatnonzero(run.real.targets.argmax(1) == 0))
    method = GAN(run.method.context)
    method.train = lambda labelled: must_not_train()
    with pytest.raises(data.DataError, match="no image of \\['pneumonia'\\]"):
        method.fit(normal_only, run.dataset.train)


def test_a_recipe_other_than_the_default_is_another_cached_generator(run):
    from tsynd_tf.synthesis.gan_model import Recipe

    assert Recipe().settings() == {}  # the default's cache key is version 1's
    other = GAN(run.method.context, Recipe(g_width=8, mode_seeking=1.0))
    other.fit(run.real, run.dataset.train)  # 10 steps, with the mode-seeking term
    record = other.generator_record
    assert not record["loaded"] and record["entry"] != run.method.generator_record["entry"]
    assert record["settings"]["g_width"] == 8 and record["settings"]["mode_seeking"] == 1.0
    images = other.pool(0, run.classifier, 16).images
    assert images.shape == (16, 28, 28, 1) and images.std() > 0
