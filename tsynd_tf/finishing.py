"""Finishing a run: both views of the classifier evaluated, the pools' quality measured,
results.json written.

The headline view is the best-on-validation classifier (KeepBest's weights); the other is
the classifier at the end of training (last/... keys). Both are saved and evaluated with the
same seeded MC dropout, so evaluating leaves the dropout state as it was. The pools' quality
is measured after the classifier's last step, so measuring never changes what a run trains.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from tsynd_tf import callbacks, data
from tsynd_tf.run_parts import RunParts

log = logging.getLogger(__name__)


def finish(parts: RunParts, seconds: float, timed, stage_seconds: dict) -> dict:
    """Evaluates and records the finished run; `timed(stage)` clocks the evaluation and
    quality stages into `stage_seconds` (training.Trainer.timed), reported as seconds/..."""
    config, run_dir = parts.config, parts.run_dir
    run_dir.save_classifier(parts.classifier, last=True)
    with timed("evaluation"):
        last = test_and_val(parts)  # seeded: leaves the dropout state as it was
    parts.classifier.load_weights(run_dir.best_weights)
    run_dir.save_classifier(parts.classifier)
    with timed("evaluation"):
        results = test_and_val(parts)
    results.update({f"last/{k}": v for k, v in last.items()})
    pool_size = parts.pool_size if parts.method.makes_images else 0
    selection = run_dir.read_selection() or {}
    results.update({"num_labelled": len(parts.real), "method": config.method,
                    "classifier_epochs": int(parts.checkpoint.classifier_epoch),
                    "selected_epoch": selection.get("epoch"),
                    "pool_size": pool_size, "seconds_this_session": seconds,
                    "precision": parts.policy, "num_synthetic": pool_size * config.rounds})
    # The generator's training time, whichever run or session paid it: a run resumed after
    # its generator stage has no record in memory, but generator.json has it.
    generator = parts.method.generator_record or parts.chief_dir.read_generator()
    if generator is not None:
        results.update({"generator_seconds": generator["seconds"],
                        "generator_loaded": generator["loaded"]})
    if pool_size and config.pool_quality and parts.is_chief:
        with timed("pool_quality"):
            results.update(measure_pools(parts))
    results.update({f"seconds/{stage}": seconds
                    for stage, seconds in sorted(stage_seconds.items())})
    with parts.writer.as_default(step=int(parts.checkpoint.classifier_epoch)):
        for key, value in results.items():
            if key.startswith(("test/", "last/test/")):
                tf.summary.scalar(key, value)
    parts.writer.flush()
    run_dir.write_results(results)
    return results


def test_and_val(parts: RunParts) -> dict:
    """MC metrics of the classifier as it is, keyed test/... and val/..."""
    info, num_samples, seed = parts.dataset.info, parts.config.num_samples, parts.config.seed
    results = {}
    for name, split, batches in (
            ("test", parts.dataset.test, data.make_pipeline(
                parts.dataset.test.images, parts.dataset.test.targets, parts.eval_batch_size)),
            ("val", parts.dataset.val, parts.val_batches)):
        metrics = callbacks.mc_metrics(parts.classifier, split, batches, info, num_samples,
                                       seed)
        results.update({f"{name}/{k}": v for k, v in metrics.items()})
    return results


def measure_pools(parts: RunParts) -> dict:
    """Quality of each pool, of all of them, and of the real labelled images (the floor a
    generator is read against), against the training split (reference.PoolQuality):
    written to the run directory and TensorBoard; all pools' as quality/... results, with
    the number of collapsed classes (reference.collapsed_classes; named in quality.json and
    a warning). Every generating method's pools are checked here, after the classifier's
    last step: the check reads the reference, which saw every training label, so it may
    record and warn but never change a pool or training."""
    from tsynd_tf import reference

    meter = reference.PoolQuality(parts.dataset, parts.config.cache_dir, parts.eval_batch_size)
    pools = [parts.chief_dir.read_pool(r) for r in range(parts.config.rounds)]
    # Next to a targeted pool's quality, the MI its images had under the classifier that
    # targeted them (its diagnostics): what the targeting traded realism for.
    rounds = [{**meter.measure(data.Split(p["images"], p["targets"])),
               **({"mean_mi": float(p["mutual_information"].mean())}
                  if "mutual_information" in p else {})} for p in pools]
    every = meter.measure(data.Split.joined([data.Split(p["images"], p["targets"])
                                             for p in pools]))
    collapsed = reference.collapsed_classes(every)
    parts.run_dir.write_quality({"reference": meter.record, "labelled":
                                 meter.measure(parts.real), "rounds": rounds, "all": every,
                                 "collapsed_classes": collapsed,
                                 "collapse_threshold": reference.COLLAPSE_THRESHOLD})
    if collapsed:
        # A warning, not a failure: a collapsed class is an outcome of this method on this
        # labelled subset, which a comparison of methods must report rather than drop (a
        # failed cell only for the seeds where a method did badly would bias it upwards).
        log.warning("The synthetic images of %s are closer to each other than real images "
                    "of the class are (nearest-neighbour diversity %s < %g in the reference "
                    "features): few distinct images, repeated with small variations.",
                    collapsed, {name: round(every[f"nearest_diversity/{name}"], 3)
                                for name in collapsed}, reference.COLLAPSE_THRESHOLD)
    with parts.writer.as_default():
        for round_index, measured in enumerate(rounds):
            for key, value in measured.items():
                tf.summary.scalar(f"quality/{key}", value, step=round_index)
    log.info("Pool quality (all %d synthetic images): %s.", every["num_images"],
             ", ".join(f"{k} {v:.4g}" for k, v in every.items() if k != "num_images"))
    return {**{f"quality/{key}": value for key, value in every.items()},
            "quality/collapsed_classes": len(collapsed)}
