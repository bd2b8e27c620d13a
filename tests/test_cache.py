"""The model cache (tsynd_tf.cache): an entry trained once, loaded after, never trusted when
damaged, one per settings, and trained once when two processes ask at the same time."""

import threading

import keras
import numpy as np

from tsynd_tf import cache


def small_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


def test_an_entry_is_trained_once_then_loaded(tmp_path):
    entry = cache.entry(tmp_path, "toy", {"steps": 3})
    trained, calls = small_model(0), []
    first = cache.fetch(entry, trained, lambda: calls.append("trained"))
    assert calls == ["trained"] and first["loaded"] is False
    assert first["settings"] == {"steps": 3} and first["entry"] == str(entry)

    fresh = small_model(1)  # other initial weights: loading must replace them
    second = cache.fetch(entry, fresh, lambda: calls.append("again"))
    assert calls == ["trained"] and second["loaded"] is True
    assert second["seconds"] == first["seconds"]  # the training time of the one who paid
    for got, want in zip(fresh.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_other_settings_are_another_entry(tmp_path):
    a = cache.entry(tmp_path, "toy", {"steps": 3})
    assert cache.entry(tmp_path, "toy", {"steps": 3}).path == a.path
    assert cache.entry(tmp_path, "toy", {"steps": 4}).path != a.path
    assert cache.entry(tmp_path, "other", {"steps": 3}).path != a.path


def test_a_damaged_or_incomplete_entry_is_trained_again(tmp_path, caplog):
    entry = cache.entry(tmp_path, "toy", {"steps": 3})
    calls = []
    cache.fetch(entry, small_model(0), lambda: calls.append(1))
    entry.weights_file.write_bytes(b"torn")
    record = cache.fetch(entry, small_model(0), lambda: calls.append(2))
    assert calls == [1, 2] and record["loaded"] is False and "does not load" in caplog.text
    entry.record_file.unlink()  # killed between the weights and the record
    cache.fetch(entry, small_model(0), lambda: calls.append(3))
    assert calls == [1, 2, 3]


def test_concurrent_requests_train_one_entry_once(tmp_path):
    entry_path = cache.entry(tmp_path, "toy", {"steps": 3}).path
    calls, results = [], []
    entered = threading.Event()

    def slow_training():
        calls.append(1)
        entered.set()
        threading.Event().wait(0.5)  # the other request arrives meanwhile

    def request():
        model = small_model(0)
        results.append(cache.fetch(cache.entry(tmp_path, "toy", {"steps": 3}), model,
                                   slow_training))

    threads = [threading.Thread(target=request) for _ in range(2)]
    threads[0].start()
    entered.wait(10)
    threads[1].start()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1 and sorted(r["loaded"] for r in results) == [False, True]
    assert entry_path.is_dir()


def test_the_default_cache_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "c"))
    assert cache.entry("", "toy", {}).path.parent == tmp_path / "c"
    assert cache.entry(tmp_path / "d", "toy", {}).path.parent == tmp_path / "d"
