"""Export to a TF Serving SavedModel and the predict CLI, on the shared trained classifier
(conftest.trained_classifier) and on real chest X-ray JPEGs."""

import csv
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import TRAINED_IMAGES, run_command, run_module


NUM_SAMPLES = 10


@pytest.fixture(scope="module")
def exported(trained_classifier, write_run_dir, pneumonia, tmp_path_factory):
    """Version 1 by the CLI from a run folder, version 2 in-process (as training does)."""
    from tsynd_tf.ood import OODScore
    from tsynd_tf.serving import choose_mi_threshold, choose_ood_threshold, export_classifier

    info = pneumonia.info
    root = tmp_path_factory.mktemp("export")
    run_dir = write_run_dir(root / "run", num_samples=NUM_SAMPLES)
    base = root / "saved_models"
    cli = run_module("tsynd_tf.export", f"--run_dir={run_dir}", f"--export_dir={base}",
                     f"--name={info.name}", timeout=300)

    threshold, _ = choose_mi_threshold(trained_classifier, pneumonia.val.images, info,
                                       NUM_SAMPLES)
    labelled = pneumonia.train.subset(np.arange(TRAINED_IMAGES))
    ood_score = OODScore.fit(trained_classifier, labelled.images, labelled.targets,
                             pneumonia.val.images, info.multilabel)
    ood_threshold, _ = choose_ood_threshold(ood_score, pneumonia.val.images)
    path = export_classifier(trained_classifier, info, NUM_SAMPLES, threshold, base,
                             ood_score=ood_score, ood_threshold=ood_threshold)
    return {"base": base, "cli": base / info.name / "1", "inprocess": path, "run_dir": run_dir,
            "threshold": threshold, "cli_out": cli.stdout,
            "ood_score": ood_score, "ood_threshold": ood_threshold}


def test_layout_and_atomicity(exported, trained_classifier, pneumonia):
    from tsynd_tf.serving import ExportError, export_classifier

    model_dir = exported["base"] / "pneumoniamnist"
    assert exported["inprocess"] == model_dir / "2"  # next version after the CLI's 1
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2"]  # no temp folders left
    for version in ("1", "2"):
        assert (model_dir / version / "saved_model.pb").is_file()
        assert (model_dir / version / "variables").is_dir()
        assert oct((model_dir / version).stat().st_mode & 0o777) == "0o755"  # others read it
    assert "Exported pneumoniamnist" in exported["cli_out"]
    with pytest.raises(ExportError, match="already exists"):
        export_classifier(trained_classifier, pneumonia.info, NUM_SAMPLES, 0.1,
                          exported["base"], version=1, ood_score=exported["ood_score"],
                          ood_threshold=1.0)
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2"]


def test_atomic_writes_publish_all_or_nothing(tmp_path):
    """fileio's two primitives, which export, predict and the run directory write through."""
    from tsynd_tf import fileio

    target = tmp_path / "1"
    with pytest.raises(FileExistsError, match="appeared"):
        with fileio.atomic_directory(target) as tmp:
            (tmp / "saved_model.pb").write_text("new")
            target.mkdir()  # another export took this version meanwhile
    assert [p.name for p in tmp_path.iterdir()] == ["1"] and not list(target.iterdir())
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("torn")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["1"]
    with fileio.atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("whole")
    assert (tmp_path / "a.json").read_text() == "whole"
    assert oct((tmp_path / "a.json").stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "a.json"]


def test_export_cli_refuses_an_existing_version(exported):
    output = run_module("tsynd_tf.export", f"--run_dir={exported['run_dir']}",
                        f"--export_dir={exported['base']}", "--name=pneumoniamnist",
                        "--version=1", "--mi_threshold=0.1", exit_code=2, timeout=300)
    assert "export: error:" in output.stderr and "already exists" in output.stderr
    assert "Traceback" not in output.stderr
    assert sorted(p.name for p in (exported["base"] / "pneumoniamnist").iterdir()) == ["1", "2"]


FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    model_dir, images, out = sys.argv[1:]
    loaded = tf.saved_model.load(model_dir)
    x = tf.constant(np.load(images))
    first = {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=x).items()}
    second = loaded.signatures["serving_default"](images=x)["probabilities"].numpy()
    meta = {k: v.numpy() for k, v in loaded.signatures["metadata"]().items()}
    meta["class_names"] = [c.decode() for c in meta["class_names"]]
    meta["metadata_json"] = json.loads(meta["metadata_json"].decode())
    meta = {k: v.decode() if isinstance(v, bytes) else v for k, v in meta.items()}
    with open(f"{model_dir}/assets.extra/tsynd_metadata.json") as f:
        assets = json.load(f)
    assert not [m for m in sys.modules if m.startswith("tsynd_tf")], "project code imported"
    np.savez(out, second=second, **{k: v for k, v in first.items()})
    with open(out + ".json", "w") as f:
        json.dump({"meta": {k: (v.item() if hasattr(v, "item") else v)
                            for k, v in meta.items()}, "assets": assets}, f)
""")


def test_fresh_process_matches_in_process(exported, trained_classifier, pneumonia, tmp_path):
    """Plain tf.saved_model.load, no project code: same numbers as the Keras model.

    The served masks are T per-pass masks shared across the batch, drawn from the dropout
    state saved at export (serving.MASK_SEED): the same T passes in process, from the state
    evaluation.seeded_dropout(MASK_SEED) sets, give the same masks, so probabilities,
    entropy and MI must agree to float rounding. Any difference in weights, BatchNorm
    statistics, uint8 scaling or uncertainty maths would show. A second call must give the
    same answers (one answer per image, whatever the call), with dropout still live (MI is
    not silently 0).
    """
    import tensorflow as tf

    from tsynd_tf.evaluation import seeded_dropout
    from tsynd_tf.serving import MASK_SEED
    from tsynd_tf.uncertainty import mc_logits, uncertainty_from_logits

    images = pneumonia.test.images[:128]
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "out.npz"
    run_command([sys.executable, "-c", FRESH, exported["inprocess"], tmp_path / "x.npy", out],
                timeout=300)
    got = np.load(out)
    meta = json.loads(Path(str(out) + ".json").read_text())

    x = tf.cast(images, tf.float32) / 255.0
    with seeded_dropout(trained_classifier, MASK_SEED):
        ref = {k: v.numpy() for k, v in uncertainty_from_logits(
            mc_logits(trained_classifier, x, NUM_SAMPLES, shared_masks=True)).items()}

    assert got["probabilities"].shape == (128, 2) and got["probabilities"].dtype == np.float32
    assert got["predicted_class"].dtype == np.int64
    np.testing.assert_allclose(got["probabilities"], ref["probs"], atol=1e-5,
                               err_msg="exported probabilities differ from the Keras model's "
                               "with the same dropout masks")
    np.testing.assert_allclose(got["predictive_entropy"], ref["predictive_entropy"],
                               atol=1e-5)
    np.testing.assert_allclose(got["mutual_information"], ref["mutual_information"],
                               atol=1e-5)
    clear = np.abs(ref["probs"][:, 0] - ref["probs"][:, 1]) > 1e-4
    np.testing.assert_array_equal(got["predicted_class"][clear],
                                  ref["probs"].argmax(-1)[clear])
    # The OOD score is deterministic (no dropout): the same as in process, to float rounding.
    np.testing.assert_allclose(got["ood_score"], exported["ood_score"].scores(images),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got["refer"],
                                  (got["mutual_information"] > exported["threshold"]) |
                                  (got["ood_score"] > exported["ood_threshold"]))
    # One answer per image: a second call gives the same, its masks the same T.
    np.testing.assert_array_equal(got["second"], got["probabilities"])
    assert (got["mutual_information"] > 0).mean() > 0.9
    assert_metadata_carried(meta, exported)


def assert_metadata_carried(meta: dict, exported: dict) -> None:
    """What the fresh process read from the export: the metadata JSON, the assets file and
    the metadata tensors all carry the run's classes, input and thresholds."""
    for source in (meta["meta"]["metadata_json"], meta["assets"]):
        assert source["class_names"] == ["normal", "pneumonia"]
        assert source["dataset_name"] == "pneumoniamnist"
        assert source["task"] == "binary-class"
        assert (source["size"], source["channels"]) == (28, 1)
        assert source["num_samples"] == NUM_SAMPLES
        assert source["mi_threshold"] == pytest.approx(exported["threshold"])
        assert source["ood_threshold"] == pytest.approx(exported["ood_threshold"])
    tensors = meta["meta"]
    assert tensors["class_names"] == ["normal", "pneumonia"]
    assert (tensors["dataset_name"], tensors["task"]) == ("pneumoniamnist", "binary-class")
    assert tensors["size"] == 28 and tensors["num_samples"] == NUM_SAMPLES
    assert tensors["mi_threshold"] == pytest.approx(exported["threshold"], rel=1e-6)
    assert tensors["ood_threshold"] == pytest.approx(exported["ood_threshold"], rel=1e-6)


def test_cli_threshold_is_validation_quantile(exported):
    meta = json.loads((exported["cli"] / "assets.extra" / "tsynd_metadata.json").read_text())
    rule = meta["threshold_rule"]
    assert rule["quantile"] == 0.95 and rule["num_validation_images"] == 524
    assert rule["num_samples"] == NUM_SAMPLES
    assert 0.04 < rule["refer_fraction_validation"] <= 0.05  # at most the target
    assert 0 < meta["mi_threshold"] <= rule["validation_mi_max"]


def test_saved_model_cli_shows_signatures(exported):
    text = run_command([Path(sys.executable).parent / "saved_model_cli", "show", "--all",
                        "--dir", exported["cli"]], timeout=300).stdout
    serving = text.split("signature_def['serving_default']")[1]
    assert "inputs['images'] tensor_info:" in serving
    assert "dtype: DT_UINT8" in serving and "shape: (-1, 28, 28, 1)" in serving
    for name, dtype in (("probabilities", "DT_FLOAT"), ("predicted_class", "DT_INT64"),
                        ("predictive_entropy", "DT_FLOAT"),
                        ("mutual_information", "DT_FLOAT"), ("ood_score", "DT_FLOAT"),
                        ("refer", "DT_BOOL")):
        assert f"outputs['{name}'] tensor_info:\n        dtype: {dtype}" in serving
    assert "signature_def['metadata']" in text and "outputs['class_names']" in text


@pytest.fixture(scope="module")
def xray_folder(chest_xray_dir, tmp_path_factory):
    """20 JPEGs per class from the real chest X-ray test set, plus a corrupt one."""
    folder = tmp_path_factory.mktemp("xray")
    good = []
    for name in ("NORMAL", "PNEUMONIA"):
        (folder / name).mkdir()
        for src in sorted((chest_xray_dir / "test" / name).glob("*.jpeg"))[:20]:
            shutil.copy(src, folder / name / src.name)
            good.append(str(folder / name / src.name))
    (folder / "corrupt.jpeg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return folder, good


def test_predict_cli(exported, xray_folder, tmp_path):
    folder, good = xray_folder
    output = tmp_path / "out" / "preds.csv"
    result = run_module("tsynd_tf.predict",
                        f"--model={exported['cli'].parent}",  # model name folder: latest
                        f"--output={output}", "--batch_size=16", "--show=5", folder,
                        exit_code=1, timeout=300)  # 1: the work ran, one file failed
    assert str(folder / "corrupt.jpeg") in result.stderr
    assert "predict: error: 1 file(s) could not be read" in result.stderr
    assert "40 image(s) classified" in result.stdout and "1 unreadable" in result.stdout
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["file"] for r in rows) == sorted(good)
    assert os.listdir(output.parent) == ["preds.csv"]  # the temporary file was renamed
    assert oct(output.stat().st_mode & 0o777) == "0o644"
    metadata = json.loads((exported["inprocess"] / "assets.extra" /
                           "tsynd_metadata.json").read_text())
    for row in rows:
        assert row["class"] in ("normal", "pneumonia")
        assert 0.5 <= float(row["probability"]) <= 1.0
        assert float(row["probability"]) == pytest.approx(float(row[f"p_{row['class']}"]))
        assert float(row["entropy"]) >= 0 and float(row["mi"]) >= 0
        assert float(row["ood_score"]) >= 0
        assert row["refer"] == str(int(float(row["mi"]) > metadata["mi_threshold"] or
                                       float(row["ood_score"]) > metadata["ood_threshold"]))


class _Lines:
    """A stand-in for stderr that keeps what is written."""

    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass


def test_predict_json_in_process(exported, xray_folder, tmp_path):
    from tsynd_tf.predict import load_model, open_output, predict

    folder, good = xray_folder
    serve, metadata = load_model(exported["cli"])
    assert metadata["class_names"] == ["normal", "pneumonia"]
    output, err = tmp_path / "preds.json", _Lines()
    with open_output(output, metadata["class_names"], {"mi_threshold": 0.0}) as writer:
        shown, counts, referred, classified, failed = predict(
            serve, metadata, [good[0], good[-1], str(folder / "corrupt.jpeg")],
            batch_size=2, mi_threshold=0.0, writer=writer, err=err)
        assert not output.exists()  # published only when complete
    data = json.loads(output.read_text())
    assert [p["file"] for p in data["predictions"]] == [good[0], good[-1]]
    assert data["failed"] == failed == [str(folder / "corrupt.jpeg")]
    assert classified == 2 and referred == 2 and sum(counts.values()) == 2  # threshold 0
    assert any("corrupt.jpeg" in line for line in err.lines)

    with pytest.raises(KeyboardInterrupt):  # an interrupted run leaves no file, not a torn one
        with open_output(tmp_path / "torn.csv", metadata["class_names"], {}) as writer:
            predict(serve, metadata, good[:2], writer=writer, err=err)
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.json"]


def test_predict_rejects_non_models_and_bad_arguments(trained_classifier, tmp_path):
    from tsynd_tf.predict import ModelError, load_model

    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    result = run_module("tsynd_tf.predict", f"--model={not_a_model}", tmp_path, exit_code=2,
                        timeout=300)
    assert "predict: error:" in result.stderr
    assert "holds no SavedModel" in result.stderr and str(not_a_model) in result.stderr
    assert "Traceback" not in result.stderr
    result = run_module("tsynd_tf.predict", f"--model={not_a_model}", exit_code=2)
    assert "predict: error: name at least one image file or folder" in result.stderr
    result = run_module("tsynd_tf.predict", f"--model={not_a_model}", "--output=preds.txt",
                        tmp_path, exit_code=2)
    assert "predict: error: --output must end in .csv or .json" in result.stderr

    plain = tmp_path / "plain"  # a SavedModel, but not ours: no metadata signature
    trained_classifier.export(str(plain), verbose=False)
    with pytest.raises(ModelError, match="not one exported by tsynd_tf.export"):
        load_model(plain)
