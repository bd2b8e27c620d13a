"""tf.distribute on real PneumoniaMNIST: MirroredStrategy over 2 logical CPU devices, a
checkpoint saved under it restored under the default strategy, MC-dropout masks of their own
on every replica (and Keras' own with one replica), and a 2-worker
MultiWorkerMirroredStrategy cluster on 127.0.0.1 whose workers end with the same weights."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN_FLAGS, reproducible, run_command, subprocess_env

REPO = Path(__file__).resolve().parents[1]
LOGICAL_CPUS = [sys.executable, str(REPO / "tests" / "logical_cpus.py"), "2"]
# Every stage runs once; epochs_per_round=0 leaves the classifier of epoch 1 as both the best
# and the last one.
TINY = [*TINY_TRAIN_FLAGS, "--train_count=64", "--epochs_per_round=0"]


def train_command(run_dir, medmnist_dir, *extra):
    return ["-m", "tsynd_tf.train", f"--data_dir={medmnist_dir}", f"--output_dir={run_dir}",
            *TINY, *extra]


def classifier_weights(path):
    import keras

    from tsynd_tf import models  # noqa: F401 - registers MCDropout

    return keras.saving.load_model(path, compile=False).get_weights()


ASCENT_UNDER_BOTH_STRATEGIES = """
import keras, numpy as np, tensorflow as tf
from tsynd_tf import data, distribute, models
from tsynd_tf.synthesis import latent_ascent

pool = 37  # batches of 8: the last one (5) splits 3 + 2 over the replicas
images = data.load_medmnist("pneumoniamnist", 28, DATA_DIR).train.images[:pool] / 255.0
results = {}
for name in ("default", "mirrored"):
    keras.utils.set_random_seed(0)
    strategy = distribute.make_strategy(name)
    with strategy.scope():
        encoder, decoder, _ = models.build_autoencoder(28, 1)
        # Deterministic classifier (no dropout): both strategies must ascend identically.
        inputs = keras.Input((28, 28, 1))
        classifier = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
        ascent = latent_ascent.LatentAscent(decoder, classifier, pool, objective="entropy",
                                            epsilon=0.3, step_size=0.25, num_samples=2,
                                            multilabel=False)
        ascent.compile(optimizer=None)
    ascent.start_from(encoder(images.astype("float32")))
    ascent.fit(tf.data.Dataset.range(pool).batch(8), epochs=3, verbose=0, shuffle=False)
    results[name] = (strategy.num_replicas_in_sync, ascent.latents.numpy(),
                     ascent.anchors.numpy())
    if name == "mirrored":
        copies = [v.numpy() for v in ascent.latents.value.values]
        assert np.array_equal(copies[0], copies[1]), "replicas' pools differ"
(n1, default, anchors), (n2, mirrored, _) = results["default"], results["mirrored"]
assert (n1, n2) == (1, 2), (n1, n2)
moved = np.abs(default - anchors).max()
assert moved > 1e-2, moved
assert np.abs(default - mirrored).max() < 1e-4 * moved, np.abs(default - mirrored).max()
print("ASCENT OK")
"""


def test_latent_ascent_under_mirrored_strategy_matches_default(medmnist_dir):
    code = ASCENT_UNDER_BOTH_STRATEGIES.replace("DATA_DIR", repr(str(medmnist_dir)))
    assert "ASCENT OK" in run_command([*LOGICAL_CPUS, "-c", code], timeout=300)


def test_mirrored_training_restores_under_default_strategy(tmp_path, medmnist_dir):
    output = run_command([*LOGICAL_CPUS, *train_command(tmp_path, medmnist_dir)[1:],
                          "--strategy=mirrored"], timeout=300)
    assert "'replicas': 2" in output and "test ACC" in output
    assert (tmp_path / "synthetic" / "round_00.npz").is_file()
    first = json.loads((tmp_path / "results.json").read_text())

    # The same run under the default strategy: the mirrored checkpoint restores (every
    # object matched) and nothing is trained again.
    output = run_command([sys.executable, *train_command(tmp_path, medmnist_dir),
                          "--strategy=default"], timeout=300)
    assert "Resumed from" in output
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["classifier_epochs"] == first["classifier_epochs"] == 1

    # And here, under no strategy: the checkpoint's classifier is the saved best one.
    import tensorflow as tf

    from tsynd_tf import models

    classifier = models.build_classifier("small_cnn", 28, 1, 2)
    latest = tf.train.latest_checkpoint(tmp_path / "checkpoints")
    tf.train.Checkpoint(classifier=classifier).restore(latest).expect_partial()
    saved = classifier_weights(tmp_path / "classifier.keras")
    for restored, expected in zip(classifier.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(restored, expected)


REPLICA_MASKS = """
import keras, numpy as np, tensorflow as tf
from tsynd_tf import data, distribute, models

strategy = distribute.make_strategy("mirrored")
assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync


def per_replica(layer, inputs, calls=2):
    # Every replica gets the same inputs: only their dropout masks can tell them apart.
    step = tf.function(lambda: strategy.run(lambda: layer(inputs)))
    return [[v.numpy() for v in strategy.experimental_local_results(step())]
            for _ in range(calls)]


def masks(seed):
    with strategy.scope():
        dropout = models.MCDropout(0.5, seed=seed)
    return per_replica(dropout, tf.ones((64, 32)))


first, second = masks(7)
for replica_0, replica_1 in (first, second):
    assert not np.array_equal(replica_0, replica_1), "replicas drew the same masks"
    for mask in (replica_0, replica_1):  # still dropout at rate 0.5: 0 or 1 / (1 - 0.5)
        assert set(np.unique(mask)) == {0.0, 2.0} and 0.4 < (mask == 0).mean() < 0.6
assert not np.array_equal(first[0], second[0]), "a second call drew the same masks"
again = masks(7)  # reproducible at a seed, replica by replica
for call, call_again in zip((first, second), again):
    for mask, mask_again in zip(call, call_again):
        np.testing.assert_array_equal(mask, mask_again)

keras.utils.set_random_seed(0)
images = data.load_medmnist("pneumoniamnist", 28, DATA_DIR).test.images[:8] / 255.0
with strategy.scope():
    classifier = models.build_classifier("small_cnn", 28, 1, 2)
[(logits_0, logits_1)] = per_replica(classifier, tf.constant(images, tf.float32), calls=1)
assert np.abs(logits_0 - logits_1).max() > 1e-3, "replicas' MC samples are identical"
print("MASKS OK")
"""


def test_replicas_draw_their_own_dropout_masks(medmnist_dir):
    code = REPLICA_MASKS.replace("DATA_DIR", repr(str(medmnist_dir)))
    assert "MASKS OK" in run_command([*LOGICAL_CPUS, "-c", code], timeout=300)


def test_one_replica_draws_keras_own_dropout_masks():
    """With one replica (no strategy, or a strategy over one device) MC dropout takes Keras'
    Dropout path: a single-device run draws bitwise the masks it drew before replicas got
    their own, so recorded runs resume and reproduce unchanged."""
    import keras
    import tensorflow as tf

    from tsynd_tf import models

    inputs = tf.ones((64, 32))
    for strategy in (tf.distribute.get_strategy(),
                     tf.distribute.MirroredStrategy(["/cpu:0"])):
        with strategy.scope():
            mc_dropout = models.MCDropout(0.3, seed=11)
            keras_dropout = keras.layers.Dropout(0.3, seed=11)
        for _ in range(3):  # the seed state advances alike, call after call
            expected = strategy.run(lambda: keras_dropout(inputs, training=True))
            drawn = strategy.run(lambda: mc_dropout(inputs))
            np.testing.assert_array_equal(drawn, expected)
            assert 0.2 < float(tf.reduce_mean(tf.cast(drawn == 0, tf.float32))) < 0.4


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_training_gives_every_worker_the_same_model(tmp_path, medmnist_dir):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers},
                                "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker_{index}.log", "w")
        # The same command on every worker, as on a real cluster.
        processes.append(subprocess.Popen(
            [sys.executable, *train_command(tmp_path / "run", medmnist_dir),
             "--strategy=multi_worker"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env=subprocess_env(TF_CONFIG=tf_config, TF_NUM_INTRAOP_THREADS="1")))
    try:
        codes = [p.wait(timeout=300) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    logs = [(tmp_path / f"worker_{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-4000:] for log in logs)
    assert "MultiWorkerMirroredStrategy" in logs[0] and "'replicas': 2" in logs[0]

    chief, other = tmp_path / "run", tmp_path / "run" / "workertemp_1"
    for run_dir in (chief, other):  # a complete run each: the chief in the run directory
        for name in ("results.json", "classifier.keras", "synthetic/round_00.npz"):
            assert (run_dir / name).is_file(), run_dir / name
    assert not (chief / "workertemp_0").exists()

    for a, b in zip(classifier_weights(chief / "classifier.keras"),
                    classifier_weights(other / "classifier.keras"), strict=True):
        np.testing.assert_array_equal(a, b)
    with np.load(chief / "synthetic" / "round_00.npz") as a, \
            np.load(other / "synthetic" / "round_00.npz") as b:
        for key in ("images", "targets", "source_indices"):
            np.testing.assert_array_equal(a[key], b[key])
    results = [json.loads((d / "results.json").read_text()) for d in (chief, other)]
    assert reproducible(results[0]) == reproducible(results[1])


@pytest.mark.parametrize("n_real, n_synthetic, replicas", [(32, 32, 2), (48, 16, 2),
                                                           (48, 16, 4), (45, 19, 2)])
def test_mixed_batches_give_every_replica_the_same_share_of_synthetic_rows(
        n_real, n_synthetic, replicas):
    from tsynd_tf.data.pipeline import interleaving_order

    order = interleaving_order(n_real, n_synthetic)
    assert sorted(order) == list(range(n_real + n_synthetic))
    is_synthetic = order >= n_real
    per_replica = [part.sum() for part in np.array_split(is_synthetic, replicas)]
    assert max(per_replica) - min(per_replica) <= 1, per_replica
