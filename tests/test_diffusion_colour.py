"""`--method=diffusion` on colour (3-channel) images: the real chest X-ray folder loaded with
--channels=3 (grayscale content re-encoded as RGB JPEG, so its three channels are equal).

Issue 26.1 reported coloured noise from a 3-channel dataset. The diagnosis (docs/PERFORMANCE.md)
found the channel path sound and a 3-channel generator slow to learn that its channels are
equal (here its samples' channels spread 0.25 apart); grey content stored as colour is now
modelled as one channel and repeated (generators.grey_content). This test trains one small
generator the way `train` does (run_parts.assemble, Diffusion.fit) and checks its samples
against the data rather than only their shape and range:

  channels   the data's channels are equal: the samples' spread across channels is small
  pixels     mean and contrast near the labelled images' (coloured noise averages to grey
             with a low per-image contrast)
  structure  label fidelity and precision (k=3) in a reference classifier's features
             (reference.PoolQuality) above floors that a generator that has not learned the
             data does not reach
"""

import dataclasses

import numpy as np
import pytest

from tsynd_tf import data

STEPS = 300  # generator steps of batch BATCH: see the module docstring
BATCH = 32
POOL = 200
REFERENCE_IMAGES = 1500  # training images the (cheap) reference classifier learns from


@pytest.fixture(scope="module")
def colour_run(chest_xray_dir, tmp_path_factory):
    from tsynd_tf import run_parts
    from tsynd_tf.config import TrainConfig
    from tsynd_tf.runs import RunDir

    root = tmp_path_factory.mktemp("colour")
    config = TrainConfig(dataset="folder", data_dir=str(chest_xray_dir), channels=3, size=28,
                         train_count=100, method="diffusion", generator_size="small",
                         generator_steps=STEPS, batch_size=BATCH,
                         ddim_steps=10, verbose=0,
                         export_dir="", pool_quality=False, output_dir=str(root / "run"),
                         cache_dir=str(root / "cache"))
    parts = run_parts.assemble(config, RunDir(root / "run"))
    parts.method.fit(parts.real, parts.dataset.train)
    pool = parts.method.pool(0, parts.classifier, POOL)
    return parts, pool


@pytest.fixture(scope="module")
def meter(colour_run, monkeypatch_module):
    """PoolQuality with the small_cnn reference on a stratified sample of the training
    split: the wide CNN's 40 epochs on 4,694 images take most of a quarter hour here."""
    from tsynd_tf import reference

    parts, _ = colour_run
    monkeypatch_module.setattr(reference, "DEFAULT_RECIPE", "small_cnn")
    dataset = parts.dataset
    sample = data.subsample_indices(dataset.train.targets, count=REFERENCE_IMAGES, seed=0)
    # The sample's arrays give it its own fingerprint, so its reference is another entry.
    return reference.PoolQuality(dataclasses.replace(dataset, train=dataset.train.subset(sample)),
                                 parts.config.cache_dir)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_folder_loads_as_three_equal_channels(colour_run):
    parts, _ = colour_run
    images = parts.real.images
    assert images.shape[1:] == (28, 28, 3)
    np.testing.assert_array_equal(np.broadcast_to(images[..., :1], images.shape), images)


def test_grey_content_is_modelled_as_one_channel_and_real_colour_is_not(colour_run):
    from tsynd_tf.synthesis import generators

    parts, _ = colour_run
    assert parts.method.model.channels == 1  # the generator the fixture trained
    images = parts.dataset.val.images
    assert generators.grey_content(images)
    tinted = images.copy()
    tinted[..., 0] = 255 - tinted[..., 0]  # channels that differ: colour, kept as three
    assert not generators.grey_content(tinted)
    assert not generators.grey_content(images[..., :1])  # already one channel


def test_samples_have_the_datas_channels_and_pixel_statistics(colour_run):
    parts, pool = colour_run
    assert pool.images.shape == (POOL, 28, 28, 3) and pool.images.dtype == np.uint8
    samples = pool.images.astype(np.float64) / 255
    real = parts.real.images.astype(np.float64) / 255
    spread = (samples.max(-1) - samples.min(-1)).mean()
    assert spread < 0.03, spread  # the 3-channel generator before the fix: 0.25
    assert abs(samples.mean() - real.mean()) < 0.05, (samples.mean(), real.mean())
    contrast = samples.mean(-1).std((1, 2)).mean() / real.mean(-1).std((1, 2)).mean()
    assert contrast > 0.6, contrast


def test_samples_have_the_datas_structure(colour_run, meter):
    _, pool = colour_run
    measured = meter.measure(data.Split(pool.images, pool.targets))
    real = meter.measure(colour_run[0].real)
    # Measured on this folder at 300 steps (2026-12-05): precision 0.82, recall 0.41, label
    # fidelity 0.71 (the labelled images: 0.95, 0.96, 0.91). Coloured noise, issue 26's
    # failure, has recall ~0.01; label fidelity alone is weak here (a 74% pneumonia pool
    # labelled "pneumonia" throughout scores 0.74), so the floors rest on precision/recall.
    # At 150 steps (2026-12-07, to shorten the suite) the samples are not yet chests:
    # precision 0.00, recall 0.00, label fidelity 0.22. So 300 stays.
    assert measured["precision"] > 0.5, (measured, real)
    assert measured["recall"] > 0.2, (measured, real)
    assert measured["label_fidelity"] > 0.6, (measured, real)
