"""Evaluation metrics, attacks, corruptions and the evaluate CLI on real PneumoniaMNIST."""

import keras
import numpy as np
import pytest
from conftest import run_module
from sklearn.metrics import accuracy_score, roc_auc_score

from tsynd_tf import evaluation
from tsynd_tf.data import DatasetInfo
from tsynd_tf.models import build_classifier

NUM_SAMPLES, BATCH = 4, 128
NUM_TEST = 256  # first test images: enough to see attacks, small enough for 2 CPU cores


@pytest.fixture(scope="module")
def test_split(pneumonia):
    return pneumonia.test.images[:NUM_TEST], pneumonia.test.targets[:NUM_TEST]


def _evaluate(classifier, test_split, info, **kwargs):
    images, targets = test_split
    return evaluation.evaluate_classifier(classifier, images, targets, info,
                                          num_samples=NUM_SAMPLES, batch_size=BATCH, **kwargs)


BINARY = DatasetInfo("toy", "binary-class", ("normal", "pneumonia"), 28, 1)
MULTILABEL = DatasetInfo("toy", "multi-label, binary-class", ("a", "b", "c"), 28, 1)


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs1 = np.clip(labels * 0.6 + rng.uniform(0, 0.4, 200), 0, 1)
    probs = np.stack([1 - probs1, probs1], 1)
    metrics = evaluation.classification_metrics(np.eye(2)[labels], probs, BINARY)
    assert metrics["acc"] == pytest.approx(accuracy_score(labels, probs.argmax(1)))
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, probs1))
    assert metrics["nll"] == pytest.approx(-np.mean(np.log(probs[np.arange(200), labels])))
    assert 0.0 <= metrics["ece"] <= 1.0
    assert {"precision/normal", "recall/pneumonia", "f1/pneumonia"} <= set(metrics)

    perfect = evaluation.classification_metrics(np.eye(2)[labels], np.eye(2)[labels], BINARY)
    assert perfect["acc"] == perfect["balanced_acc"] == perfect["auc"] == 1.0
    assert perfect["ece"] == pytest.approx(0.0) and perfect["nll"] == pytest.approx(0.0)


def test_ece_of_known_bins():
    # 10 predictions at confidence 0.8 of which 5 are right: |0.5 - 0.8| = 0.3.
    assert evaluation.expected_calibration_error(np.full(10, 0.8), np.arange(10) < 5) == \
        pytest.approx(0.3)


def test_multilabel_metrics():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, (100, 3)).astype(np.float32)
    probs = np.clip(targets * 0.7 + rng.uniform(0, 0.3, targets.shape), 0, 1)
    metrics = evaluation.classification_metrics(targets, probs, MULTILABEL)
    assert metrics["acc"] == pytest.approx(np.mean((probs > 0.5) == targets))
    assert 0.0 <= metrics["ece"] <= 1.0 and np.isfinite(metrics["nll"])


def test_sigma_zero_reproduces_clean_exactly(trained_classifier, test_split, pneumonia):
    results = _evaluate(trained_classifier, test_split, pneumonia.info,
                        gaussian_sigmas=[0.0, 0.2])
    # Same images and the same dropout masks (the RNG is reset per condition): identical.
    for metric in evaluation.SUMMARY_METRICS:
        assert results[f"gaussian_0/{metric}"] == results[f"test/{metric}"], metric
    assert results["gaussian_0.2/nll"] != results["test/nll"]
    assert results["test/acc"] > 0.7, "the fixture classifier should have learned something"
    again = _evaluate(trained_classifier, test_split, pneumonia.info)
    assert again["test/acc"] == results["test/acc"] and again["test/nll"] == results["test/nll"]


def test_evaluation_leaves_the_dropout_rng_as_it_was(trained_classifier, test_split):
    states = [v for v in trained_classifier.non_trainable_variables
              if "seed_generator" in v.path]
    before = [v.numpy().copy() for v in states]
    evaluation.MCPredictor(trained_classifier, NUM_SAMPLES, multilabel=False).predict(
        test_split[0][:8])
    for state, value in zip(states, before):
        np.testing.assert_array_equal(state.numpy(), value)


def test_attacks_lower_accuracy(trained_classifier, test_split, pneumonia):
    results = _evaluate(trained_classifier, test_split, pneumonia.info, fgsm_epsilons=[0.03],
                        pgd_epsilons=[0.002, 0.03], pgd_steps=5)
    clean = results["test/acc"]
    # Dropout masks are common to all conditions, so the remaining MC noise is the attack's
    # own: allow 1 image in 256 of slack for FGSM.
    assert results["fgsm_0.03/acc"] <= clean + 1 / NUM_TEST
    assert results["pgd_0.03/acc"] <= results["pgd_0.002/acc"]
    assert results["pgd_0.03/acc"] < clean - 0.1


def test_pgd_stays_in_the_epsilon_ball(trained_classifier, test_split):
    images, targets = test_split
    clean = evaluation.to_unit_float(images[:64])
    predictor = evaluation.MCPredictor(trained_classifier, NUM_SAMPLES, multilabel=False)
    adversarial = predictor.pgd(clean, targets[:64], epsilon=0.01, steps=3)
    assert adversarial.dtype == np.float32 and adversarial.shape == clean.shape
    assert np.abs(adversarial - clean).max() <= 0.01 + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0


def test_gaussian_noise_is_seeded_and_clipped(pneumonia):
    images = pneumonia.test.images[:16]
    noisy = evaluation.gaussian_noise(images, 0.3, seed=1)
    assert noisy.dtype == np.float32 and noisy.min() >= 0.0 and noisy.max() <= 1.0
    np.testing.assert_array_equal(noisy, evaluation.gaussian_noise(images, 0.3, seed=1))
    np.testing.assert_array_equal(evaluation.gaussian_noise(images, 0.0),
                                  evaluation.to_unit_float(images))


@pytest.mark.parametrize("dataset", ["pneumoniamnist", "breastmnist"])
def test_corruptions_keep_format_and_grow_with_severity(pneumonia, dataset):
    images = pneumonia.test.images[:32]
    for name in evaluation.corruptions_for(dataset):
        mild, severe = (evaluation.corrupt(images, name, s, seed=0, dataset_name=dataset)
                        for s in (1, 5))
        for out in (mild, severe):
            assert out.shape == images.shape and out.dtype == np.uint8, name
        change = [np.abs(out.astype(float) - images).mean() for out in (mild, severe)]
        assert 0 < change[0] < change[1], (name, change)
        np.testing.assert_array_equal(
            severe, evaluation.corrupt(images, name, 5, seed=0, dataset_name=dataset))


def test_corrupt_rejects_bad_input(pneumonia):
    with pytest.raises(ValueError, match="Unknown corruption"):
        evaluation.corrupt(pneumonia.test.images[:2], "fog", 1)
    with pytest.raises(ValueError, match="Severity"):
        evaluation.corrupt(pneumonia.test.images[:2], "pixelate", 6)


def test_evaluate_cli_writes_results(write_run_dir, tmp_path):
    run_dir = write_run_dir(tmp_path, num_samples=2, eval_batch_size=128)
    output = run_module("tsynd_tf.evaluate", f"--run_dir={run_dir}", "--max_examples=64",
                        "--gaussian_sigmas=0,0.1", "--fgsm_epsilons=0.01",
                        "--pgd_epsilons=0.01", "--pgd_steps=2", "--corruptions", timeout=300)
    assert "pgd_0.01" in output.stdout and "corruption/mean_balanced_error" in output.stdout

    written = run_dir.read_eval("test")
    metrics, settings = written["metrics"], written["settings"]
    # --num_samples and --batch_size default to the run's num_samples and eval_batch_size.
    assert settings["num_examples"] == 64
    assert (settings["num_samples"], settings["batch_size"]) == (2, 128)
    assert metrics["gaussian_0/acc"] == metrics["test/acc"]
    assert {"fgsm_0.01/acc", "pgd_0.01/acc", "corruption/pixelate_5/acc",
            "corruption/gamma_corr_down/balanced_error",
            "corruption/mean_balanced_error_minus_clean"} <= set(metrics)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(  # no temporary file left
        p.name for p in (run_dir.classifier_file, run_dir.config_file, run_dir.subset_file,
                         run_dir.eval_file("test")))


def test_evaluate_cli_explains_bad_input(write_run_dir, tmp_path):
    output = run_module("tsynd_tf.evaluate", f"--run_dir={tmp_path / 'nope'}", exit_code=2,
                        timeout=120)
    assert "evaluate: error:" in output.stderr
    assert "must be an existing training run" in output.stderr
    output = run_module("tsynd_tf.evaluate", f"--run_dir={tmp_path}", exit_code=2, timeout=120)
    assert "evaluate: error:" in output.stderr and "config.json is missing" in output.stderr
    assert "Traceback" not in output.stderr
    assert not list(tmp_path.iterdir())
    run_dir = write_run_dir(tmp_path / "run")
    output = run_module("tsynd_tf.evaluate", f"--run_dir={run_dir}", "--pgd_epsilons=0.5,x",
                        exit_code=2, timeout=120)
    assert "evaluate: error: --pgd_epsilons must be a comma-separated list" in output.stderr
    output = run_module("tsynd_tf.evaluate", f"--run_dir={run_dir}", "stray", exit_code=2,
                        timeout=120)
    assert "unexpected arguments ['stray']" in output.stderr
    assert not run_dir.eval_file("test").exists()


def test_multilabel_evaluation_runs_end_to_end():
    keras.utils.set_random_seed(0)
    model = build_classifier("small_cnn", 28, 1, MULTILABEL.num_classes)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 28, 28, 1), dtype=np.uint8)
    targets = np.tile(np.eye(2, 3, dtype=np.float32), (16, 1))  # every label seen both ways
    targets[:, 2] = np.arange(32) % 2
    results = evaluation.evaluate_classifier(
        model, images, targets, MULTILABEL, num_samples=2, batch_size=16,
        gaussian_sigmas=[0.1], fgsm_epsilons=[0.01], pgd_epsilons=[0.01], pgd_steps=2,
        corruptions=["contrast_down"])
    assert all(np.isfinite(v) for v in results.values()), results
    assert {"fgsm_0.01/acc", "corruption/contrast_down_5/ece",
            "corruption/mean_balanced_error"} <= set(results)
