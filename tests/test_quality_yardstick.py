"""The quality yardstick's benchmark (bench/quality_yardstick.py): its degradations on real
images (bench/degradations.py), and its refusal of names it does not know before any work."""

import numpy as np
import pytest
from conftest import run_module

from tsynd_tf import data


def degrade(kind, strength, split, train):
    from bench import degradations as bench

    value = bench.DEGRADATIONS[kind][bench.STRENGTHS.index(strength)]
    return bench.degrade(kind, value, split, train, np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["blur", "noise", "contrast", "downsample", "blend"])
def test_each_degradation_moves_real_images_further_with_strength(pneumonia, kind):
    test = pneumonia.test.subset(np.arange(200))
    clean = test.images.astype(float)
    distances = [np.abs(degrade(kind, s, test, pneumonia.train).images - clean).mean()
                 for s in ("mild", "moderate", "severe")]
    assert 0 < distances[0] < distances[1] < distances[2]
    for s in ("mild", "severe"):  # the images' own labels: the degradation is what changed
        np.testing.assert_array_equal(degrade(kind, s, test, pneumonia.train).targets,
                                      test.targets)


def test_copies_are_exact_training_images_with_their_labels(pneumonia):
    test = pneumonia.test.subset(np.arange(200))
    copied = degrade("copies", "moderate", test, pneumonia.train)  # 30%
    train = {image.tobytes(): target.argmax() for image, target in
             zip(pneumonia.train.images, pneumonia.train.targets)}
    found = [train.get(image.tobytes()) for image in copied.images]
    assert sum(f is not None for f in found) == 60
    assert all(f == t.argmax() for f, t in zip(found, copied.targets) if f is not None)
    assert isinstance(copied, data.Split) and len(copied) == 200


@pytest.mark.parametrize("flag, value", [
    ("degradations", "blur,smear"), ("strengths", "mild,extreme"), ("metrics", "fid,psnr"),
    ("references", "vgg"), ("datasets", "chestmnist")])
def test_unknown_names_exit_2_naming_the_flag(flag, value, tmp_path):
    output = run_module("bench.quality_yardstick", f"--{flag}={value}",
                        f"--output={tmp_path / 'out.json'}", exit_code=2)
    assert f"--{flag}: unknown" in output.stderr and value.split(",")[-1] in output.stderr
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written
