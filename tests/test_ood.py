"""Out-of-distribution referral on real data: the shared trained classifier
(conftest.trained_classifier) exported by the export command from a run directory, its OOD
score fitted on the run's 1000 labelled PneumoniaMNIST images. Real test X-rays are not
referred by it; solid colours, uniform noise and colourful photo-like images are.

There is no natural photograph on disk, so the photo-like images are made: a smooth colour
gradient (red across, green down, blue falling) under a checkerboard that inverts it, the
kind of colourful, sharp-edged picture an X-ray is not.
"""

import csv
import json

import numpy as np
import pytest
from conftest import run_module
from PIL import Image

NUM_SAMPLES = 4
GREYS = (0, 30, 60, 90, 120, 150, 180, 210, 240, 255)


def photo_like(size: int, cells: int) -> np.ndarray:
    """(size, size, 3) uint8: the gradient under a `cells` x `cells` inverting checkerboard."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([xx, yy, 1 - xx], axis=-1) * 255
    checker = ((xx * cells).astype(int) + (yy * cells).astype(int)) % 2 == 1
    rgb[checker] = 255 - rgb[checker]
    return rgb.astype(np.uint8)


def grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 1): PIL's grey conversion, which predict applies to RGB files."""
    return np.asarray(Image.fromarray(rgb).convert("L"))[..., None]


@pytest.fixture(scope="module")
def exported(write_run_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ood")
    run_dir = write_run_dir(root / "run", num_samples=NUM_SAMPLES)
    run_module("tsynd_tf.export", f"--run_dir={run_dir}", f"--export_dir={root / 'saved'}",
               "--name=model", timeout=300)
    return root / "saved" / "model" / "1"


def serve(model_dir, images: np.ndarray) -> dict:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model_dir))
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    meta = loaded.signatures["metadata"]()
    return {**{k: v.numpy() for k, v in out.items()},
            "ood_threshold": float(meta["ood_threshold"].numpy())}


def test_test_xrays_pass_and_solid_noise_and_photo_like_images_are_referred(exported,
                                                                           pneumonia):
    rng = np.random.default_rng(0)
    others = {
        "solid": np.stack([np.full((28, 28, 1), g, np.uint8) for g in GREYS]),
        "noise": rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8),
        "photo-like": np.stack([grey(photo_like(28, cells)) for cells in (2, 3, 4, 5, 7)]),
    }
    test = pneumonia.test.images
    out = serve(exported, np.concatenate([test, *others.values()]))
    threshold, ood = out["ood_threshold"], out["ood_score"]
    assert ood.shape == (len(ood),) and ood.dtype == np.float32
    assert (ood[:len(test)] > threshold).mean() <= 0.05  # >= 95% of test X-rays pass
    start = len(test)
    for name, images in others.items():
        scores = ood[start:start + len(images)]
        assert (scores > threshold).all(), (name, scores, threshold)
        assert out["refer"][start:start + len(images)].all(), name
        start += len(images)


def test_the_ood_threshold_is_a_validation_quantile_recorded_with_its_rule(exported):
    meta = json.loads((exported / "assets.extra" / "tsynd_metadata.json").read_text())
    rule = meta["ood_threshold_rule"]
    assert rule["rule"] == "quantile of validation ood_score" and rule["quantile"] == 0.99
    assert rule["num_validation_images"] == 524
    assert rule["refer_fraction_validation"] <= 0.01
    assert meta["ood_threshold"] <= rule["validation_ood_max"]
    assert meta["ood_score"]["num_reference_images"] == 1000  # the run's labelled images
    assert meta["ood_score"]["dimensions"] == {"features": 64, "statistics": 3,
                                               "thumbnail": 64}
    assert "ood_score > ood_threshold" in meta["outputs"]["refer"]


def test_predict_refers_solid_rgba_palette_noise_and_photo_like_files(exported, tmp_path,
                                                                     chest_xray_dir):
    """Files as a user would pass them, at other sizes and modes than the model's."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.new("RGBA", (64, 64), (220, 30, 30, 255)).save(folder / "solid_rgba.png")
    Image.new("P", (50, 40), 7).save(folder / "solid_palette.png")
    Image.new("L", (28, 28), 255).save(folder / "white.png")
    Image.new("L", (100, 100), 0).save(folder / "black.png")
    Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(folder / "noise.png")
    Image.fromarray(photo_like(96, 4)).save(folder / "photo_like.png")
    xrays = sorted((chest_xray_dir / "test" / "NORMAL").glob("*.jpeg"))[:5]
    output = tmp_path / "preds.csv"
    result = run_module("tsynd_tf.predict", f"--model={exported}", f"--output={output}",
                        folder, *xrays, timeout=300)
    assert "or OOD score >" in result.stdout
    with open(output, newline="") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    threshold = json.loads((exported / "assets.extra" /
                            "tsynd_metadata.json").read_text())["ood_threshold"]
    for path in sorted(folder.iterdir()):
        row = rows[str(path)]
        assert float(row["ood_score"]) > threshold and row["refer"] == "1", (path.name, row)
    # Real X-rays, though resized from 224 px here rather than by MedMNIST, score below
    # every one of them (a few lie near the threshold: 1-6% of such images are referred).
    xray_scores = [float(rows[str(path)]["ood_score"]) for path in xrays]
    assert max(xray_scores) < min(float(rows[str(p)]["ood_score"]) for p in folder.iterdir())


@pytest.mark.parametrize("flag, message", [
    ("--ood_refer_fraction=0", "--ood_refer_fraction must be in (0, 1)"),
    ("--ood_threshold=-1", "--ood_threshold must be a finite number >= 0"),
])
def test_export_rejects_impossible_ood_flags(tmp_path, flag, message):
    done = run_module("tsynd_tf.export", f"--run_dir={tmp_path}", flag, exit_code=2)
    assert "export: error: " in done.stderr and message in done.stderr
