"""The synthesis methods: latent ascent and the latent-noise baseline on a real autoencoder
and classifier, and the seam a new method plugs into."""

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import count_traces

from tsynd_tf import data, models, uncertainty
from tsynd_tf.synthesis import Pool, SynthesisMethod, latent_ascent

POOL = 128
EPSILON = 0.6


@pytest.fixture(scope="module")
def trained(pneumonia):
    """Autoencoder and classifier briefly trained on 1000 real PneumoniaMNIST images."""
    keras.utils.set_random_seed(0)
    real = pneumonia.train.subset(data.subsample_indices(pneumonia.train.targets, count=1000))
    x = real.images.astype("float32") / 255
    encoder, decoder, autoencoder = models.build_autoencoder(28, 1)
    autoencoder.compile(keras.optimizers.Adam(1e-3), "mse")
    autoencoder.fit(x, x, batch_size=64, epochs=8, verbose=0)
    classifier = models.build_classifier("small_cnn", 28, 1, 2)
    classifier.compile(keras.optimizers.Adam(1e-3),
                       keras.losses.CategoricalCrossentropy(from_logits=True))
    classifier.fit(x, real.targets, batch_size=64, epochs=5, verbose=0)
    anchors = encoder.predict(x[:POOL], verbose=0)
    return decoder, classifier, anchors


def ascend(trained, objective):
    decoder, classifier, anchors = trained
    ascent = latent_ascent.LatentAscent(decoder, classifier, POOL, objective=objective,
                                     epsilon=EPSILON, step_size=0.25, num_samples=10,
                                     multilabel=False)
    ascent.compile(optimizer=None)
    ascent.start_from(anchors)
    ascent.fit(tf.data.Dataset.range(POOL).batch(64), epochs=10, verbose=0, shuffle=False)
    return ascent.latents.numpy()


def measure(trained, latents, key):
    """Mean uncertainty of decoded latents, with many MC samples to keep noise small."""
    decoder, classifier, _ = trained
    images = decoder.predict(latents, verbose=0)
    out = uncertainty.mc_predict(classifier, tf.data.Dataset.from_tensor_slices(images)
                                 .batch(POOL), num_samples=100)
    return out[key].mean()


def relative_distance(latents, anchors):
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    return np.linalg.norm(flat(latents - anchors), axis=1) / np.linalg.norm(flat(anchors), axis=1)


@pytest.fixture(scope="module")
def ascended(trained):
    return {objective: ascend(trained, objective) for objective in ("mi", "entropy")}


def test_mi_ascent_raises_mi_above_the_reconstructions(trained, ascended):
    _, _, anchors = trained
    before = measure(trained, anchors, "mutual_information")
    after = measure(trained, ascended["mi"], "mutual_information")
    assert after > 1.05 * before, (before, after)


def test_entropy_ascent_raises_predictive_entropy(trained, ascended):
    _, _, anchors = trained
    before = measure(trained, anchors, "predictive_entropy")
    after = measure(trained, ascended["entropy"], "predictive_entropy")
    assert after > 1.05 * before, (before, after)


@pytest.mark.parametrize("objective", ["mi", "entropy"])
def test_every_latent_stays_in_its_ball(trained, ascended, objective):
    distance = relative_distance(ascended[objective], trained[2])
    assert np.all(distance <= EPSILON * (1 + 1e-5)), distance.max()
    assert np.all(distance > 0)  # and it moved


def test_latent_noise_spends_the_same_norm_budget_as_tsynd(trained, ascended):
    anchors = trained[2]
    noise = latent_ascent.latent_noise(anchors, EPSILON, seed=0).numpy()
    noise_distance = relative_distance(noise, anchors)
    np.testing.assert_allclose(noise_distance, EPSILON, rtol=1e-5)
    # 10 steps of 0.25 radii can travel 2.5 radii: TSynD latents end on that sphere or just
    # inside it (where the ascent found a local maximum and turned back), so both methods
    # spend the same budget and TSynD uses nearly all of it.
    tsynd_distance = relative_distance(ascended["mi"], anchors)
    assert np.all(tsynd_distance <= EPSILON * (1 + 1e-5))
    assert tsynd_distance.mean() > 0.9 * EPSILON, tsynd_distance.mean()
    # Different seeds give different directions; the same seed the same one.
    assert not np.allclose(noise, latent_ascent.latent_noise(anchors, EPSILON, seed=1).numpy())
    np.testing.assert_array_equal(noise, latent_ascent.latent_noise(anchors, EPSILON, seed=0))


def test_projection_is_identity_inside_and_shrinks_outside():
    anchors = tf.ones((2, 7, 7, 8))
    radii = latent_ascent.ball_radii(anchors, 0.1)
    inside = anchors + 0.01
    np.testing.assert_allclose(latent_ascent.project_to_ball(inside, anchors, radii), inside)
    outside = anchors + 10.0
    projected = latent_ascent.project_to_ball(outside, anchors, radii)
    np.testing.assert_allclose(relative_distance(projected.numpy(), anchors.numpy()), 0.1,
                               rtol=1e-5)


def test_residual_synthesis_is_the_real_image_plus_the_decoder_change(trained, ascended,
                                                                       pneumonia):
    decoder, _, anchors = trained
    sources = pneumonia.train.images[:POOL].astype("float32") / 255
    reconstructions = decoder.predict(anchors, verbose=0)
    decodes = decoder.predict(ascended["mi"], verbose=0)
    residual = latent_ascent.render(sources, reconstructions, decodes, "residual")
    assert residual.min() >= 0.0 and residual.max() <= 1.0
    inside = (sources + decodes - reconstructions > 0) & (sources + decodes - reconstructions < 1)
    assert inside.mean() > 0.9  # clipping is the exception
    np.testing.assert_allclose((residual - sources)[inside], (decodes - reconstructions)[inside],
                               atol=1e-6)
    assert np.abs(residual - sources).max() > 0.05  # the ascent did change the image
    # An unmoved latent gives back the real image exactly; 'decode' is dec(z*) itself.
    np.testing.assert_array_equal(
        latent_ascent.render(sources, reconstructions, reconstructions, "residual"), sources)
    assert latent_ascent.render(sources, reconstructions, decodes, "decode") is decodes
    with pytest.raises(ValueError, match="Unknown rendering"):
        latent_ascent.render(sources, reconstructions, decodes, "blend")


# ----------------------------------------------------------------------------- the seam

class FlippedCopies(SynthesisMethod):
    """Not a method anyone should use: up-down flipped copies of labelled images. It shows
    that a new method needs only the seam (synthesis.base) and a registry entry."""

    def fit(self, labelled, unlabelled):
        self.labelled = labelled

    def pool(self, round_index, classifier, n):
        rows = np.arange(n) % len(self.labelled)
        return Pool(self.labelled.images[rows, ::-1], self.labelled.targets[rows],
                    {"round": np.full(n, round_index)})


def tiny_config(tmp_path, medmnist_dir, **overrides):
    from tsynd_tf.config import TrainConfig

    # One pool of the 32 labelled images' size per round.
    return TrainConfig(**{**dict(
        train_count=32, ae_epochs=1, initial_epochs=1, rounds=2, epochs_per_round=1,
        ascent_steps=1, num_samples=2, export_dir="", verbose=0, data_dir=str(medmnist_dir),
        output_dir=str(tmp_path), synthetic_multiple=overrides.get("rounds", 2),
        pool_quality=False), **overrides})


def test_a_registered_method_plugs_into_the_trainer(tmp_path, medmnist_dir, monkeypatch):
    from tsynd_tf import run_parts, synthesis, training
    from tsynd_tf.runs import RunDir

    from tsynd_tf import config as config_module

    monkeypatch.setitem(synthesis.METHODS, "flipped_copies", FlippedCopies)
    monkeypatch.setattr(config_module, "METHODS", (*config_module.METHODS, "flipped_copies"))
    config = tiny_config(tmp_path, medmnist_dir, method="flipped_copies")
    parts = run_parts.assemble(config, RunDir(tmp_path))
    results = training.Trainer(parts).run()
    assert results["num_synthetic"] == 2 * 32 and results["classifier_epochs"] == 3
    assert int(parts.checkpoint.ae_epoch) == 0  # the method never asked for the autoencoder
    real = parts.real
    for round_index in range(2):
        pool = RunDir(tmp_path).read_pool(round_index)
        np.testing.assert_array_equal(pool["images"], real.images[:, ::-1])
        np.testing.assert_array_equal(pool["targets"], real.targets)
        np.testing.assert_array_equal(pool["round"], round_index)  # diagnostics kept


def test_every_method_starts_from_the_same_classifier(tmp_path, medmnist_dir):
    """The paired design: at one seed, every method's classifier has the same initial
    weights, so methods differ only in what they add to the batches."""
    from tsynd_tf import run_parts, synthesis
    from tsynd_tf.runs import RunDir

    weights = {}
    # external reads a user's file made for a 10% subset: tests/test_external.py runs it.
    for method in (m for m in synthesis.METHODS if m != "external"):
        config = tiny_config(tmp_path / method, medmnist_dir, method=method)
        parts = run_parts.assemble(config, RunDir(tmp_path / method))
        weights[method] = parts.classifier.get_weights()
    for method, values in weights.items():
        for got, want in zip(values, weights["baseline"], strict=True):
            np.testing.assert_array_equal(got, want, err_msg=method)


def test_augment_pools_are_seeded_label_keeping_variations_of_labelled_images(
        tmp_path, medmnist_dir):
    from tsynd_tf import run_parts, training
    from tsynd_tf.runs import RunDir

    config = tiny_config(tmp_path, medmnist_dir, method="augment", rounds=1)
    parts = run_parts.assemble(config, RunDir(tmp_path))
    results = training.Trainer(parts).run()
    assert results["num_synthetic"] == 32
    pool = RunDir(tmp_path).read_pool(0)
    position = {int(index): i for i, index in enumerate(parts.labelled)}
    sources = np.array([position[int(index)] for index in pool["source_indices"]])
    real = parts.real.images[sources]
    assert pool["images"].shape == real.shape and pool["images"].dtype == np.uint8
    np.testing.assert_array_equal(pool["targets"], parts.real.targets[sources])
    difference = np.abs(pool["images"].astype(float) - real) / 255
    assert 0.01 < difference.mean() < 0.25  # changed, yet the same image
    again = parts.method.pool(0, parts.classifier, 32)  # a regenerated pool: the same
    np.testing.assert_array_equal(again.images, pool["images"])
    assert not np.array_equal(parts.method.pool(1, parts.classifier, 32).images,
                              pool["images"])


def test_diffusion_trains_samples_labelled_images_and_reuses_its_cache(
        tmp_path, medmnist_dir, caplog):
    import logging

    from tsynd_tf import run_parts, training
    from tsynd_tf.runs import RunDir

    config = tiny_config(tmp_path / "run", medmnist_dir, method="diffusion", rounds=1,
                         generator_steps=3, ddim_steps=2, cache_dir=str(tmp_path / "cache"))
    parts = run_parts.assemble(config, RunDir(tmp_path / "run"))
    results = training.Trainer(parts).run()
    pool = RunDir(tmp_path / "run").read_pool(0)
    assert pool["images"].shape == (32, 28, 28, 1) and pool["images"].dtype == np.uint8
    assert set(pool["targets"].argmax(1)) <= set(parts.real.targets.argmax(1))
    np.testing.assert_array_equal(pool["targets"].sum(1), 1.0)  # one-hot labels
    record = RunDir(tmp_path / "run").read_generator()
    assert record["loaded"] is False and record["settings"]["generator_steps"] == 3
    assert results["generator_loaded"] is False and results["generator_seconds"] > 0

    # Another run directory of the same labelled subset (another method, or a resume) loads
    # the generator instead of training it.
    other = run_parts.assemble(dataclasses.replace(config, output_dir=str(tmp_path / "other")),
                               RunDir(tmp_path / "other"))
    other.method.model.fit = None  # training it would fail
    with caplog.at_level(logging.INFO, logger="tsynd_tf"):
        other.method.fit(other.real, other.dataset.train)
    assert "loaded from the cache" in caplog.text and other.method.generator_record["loaded"]
    for got, want in zip(other.method.model.ema.get_weights(),
                         parts.method.model.ema.get_weights()):
        np.testing.assert_array_equal(got, want)
    # A corrupt cached file is not trusted: trained again.
    (Path(record["entry"]) / "weights.weights.h5").write_bytes(b"not an h5 file")
    again = run_parts.assemble(dataclasses.replace(config, output_dir=str(tmp_path / "again")),
                               RunDir(tmp_path / "again"))
    again.method.fit(again.real, again.dataset.train)
    assert "does not load" in caplog.text and not again.method.generator_record["loaded"]


def test_diffusion_refuses_a_class_without_labelled_images(tmp_path, medmnist_dir):
    from tsynd_tf import data, run_parts
    from tsynd_tf.runs import RunDir

    config = tiny_config(tmp_path, medmnist_dir, method="diffusion", generator_steps=1)
    parts = run_parts.assemble(config, RunDir(tmp_path))
    normal_only = parts.real.subset(np.flatnonzero(parts.real.targets.argmax(1) == 0))
    with pytest.raises(data.DataError, match="no image of \\['pneumonia'\\]"):
        parts.method.fit(normal_only, parts.dataset.train)


@pytest.mark.parametrize("size", ["small", "large"])
def test_each_generator_size_trains_and_samples_on_the_cpu(size, tmp_path, medmnist_dir):
    """--generator_size: both recipes train a few steps here and sample labelled images; the
    cache keeps them apart (the recipe is in the key) and the record names the recipe."""
    from tsynd_tf import run_parts
    from tsynd_tf.runs import RunDir
    from tsynd_tf.synthesis import generators
    from tsynd_tf.synthesis.diffusion import recipe_of
    from tsynd_tf.synthesis.diffusion_model import SIZES

    config = tiny_config(tmp_path / "run", medmnist_dir, method="diffusion", rounds=1,
                         generator_steps=2, ddim_steps=2, generator_size=size,
                         cache_dir=str(tmp_path / "cache"))
    parts = run_parts.assemble(config, RunDir(tmp_path / "run"))
    traces = count_traces(parts.method.model)
    parts.method.fit(parts.real, parts.dataset.train)
    # The optimizer's slots existed before the first step: traced once, not twice (a step
    # that creates variables is traced again), ~10 s less for every run that trains one.
    assert len(traces) == 1
    pool = parts.method.pool(0, parts.classifier, 4)
    assert pool.images.shape == (4, 28, 28, 1) and pool.images.dtype == np.uint8
    assert recipe_of(parts.method.generator_record) == SIZES[size]
    # The policy in force is in the key: a bfloat16 generator is not a float32 one.
    assert parts.method.generator_record["settings"]["precision"] == "float32"
    parameters = parts.method.model.network.count_params()
    assert (parameters > 5_000_000) == (size == "large")  # 8.4M vs 0.53M at 28 px
    # No GPU here: "auto" is the CPU's size.
    assert generators.generator_size(dataclasses.replace(config, generator_size="auto")) \
        == "small"


def test_an_unknown_generator_size_exits_2_naming_the_flag(tmp_path):
    from conftest import run_module

    output = run_module("tsynd_tf.train", "--generator_size=huge",
                        f"--output_dir={tmp_path / 'run'}", exit_code=2)
    assert "--generator_size" in output.stderr and "huge" in output.stderr
    assert not (tmp_path / "run").exists()
