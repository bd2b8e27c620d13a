"""Robustness grids chosen from the data, not by hand (the CLI: tsynd_tf.choose_grid).

A grid point that every method fails at (accuracy at the majority-class floor) or that no
method notices (accuracy at the clean value) cannot tell methods apart. The rule, per family
(Gaussian sigma, FGSM epsilon, PGD epsilon): evaluate the run's classifier on its validation
split (never test) at a geometric ladder of strengths, factor sqrt(2), and keep the strengths
whose balanced accuracy lies strictly between floor + MARGIN and clean - MARGIN, where clean
is the clean validation balanced accuracy and floor that of a constant prediction (1/K; 0.5
per label for multi-label tasks). Balanced accuracy, not accuracy: a model that collapses
onto one class scores that class's share in accuracy, which can lie anywhere (PneumoniaMNIST
models collapse onto NORMAL, the minority: accuracy 0.26 on validation, below the majority
share 0.74), but always the floor in balanced accuracy. Where fewer than MIN_POINTS are
kept, three strengths evenly spaced in log are added between the last strength above the band
and the first below it (at most twice). At most MAX_POINTS are kept, spread evenly in
log-strength.
"""

from __future__ import annotations

import numpy as np

MARGIN, MIN_POINTS, MAX_POINTS = 0.02, 3, 5
LADDERS = {  # family -> (evaluate flag, strongest strength of the ladder)
    "gaussian": ("gaussian_sigmas", 0.16),
    "fgsm": ("fgsm_epsilons", 0.016),
    "pgd": ("pgd_epsilons", 0.016),
}
LADDER_STEPS = 13  # strongest / sqrt(2)**12: 0.0025 (sigma), 0.00025 (epsilon)


def ladder(strongest: float, factor: float, count: int) -> list[float]:
    return [float(f"{strongest / factor ** k:.3g}") for k in reversed(range(count))]


def spread(points: list[float], most: int) -> list[float]:
    """At most `most` of the sorted points, evenly spaced in log-strength."""
    if len(points) <= most:
        return points
    picks = np.unique(np.round(np.linspace(0, len(points) - 1, most)).astype(int))
    return [points[i] for i in picks]


def choose(curve: dict[float, float], clean: float, floor: float) -> list[float]:
    """The informative strengths of a measured accuracy curve {strength: accuracy}."""
    return sorted(s for s, acc in curve.items() if floor + MARGIN < acc < clean - MARGIN)


def refine(curve: dict[float, float], clean: float, floor: float) -> list[float]:
    """Strengths between the last point above the band and the first below it, a finer
    ladder than the curve's: where the curve falls through the band."""
    points = sorted(curve)
    above = [s for s in points if curve[s] >= clean - MARGIN]
    below = [s for s in points if curve[s] <= floor + MARGIN and s > max(above, default=0)]
    low = max(above, default=points[0])
    high = min(below, default=points[-1])
    if high <= low:
        return []
    ratio = (high / low) ** (1 / 4)
    return [float(f"{low * ratio ** k:.3g}") for k in range(1, 4)]


def evaluate(run, split, num_samples: int, pgd_steps: int, **strengths) -> dict:
    """evaluate_classifier on the split, as the sweep's evaluation runs it (seed 0)."""
    from tsynd_tf import evaluation

    return evaluation.evaluate_classifier(
        run.classifier, split.images, split.targets, run.info, num_samples=num_samples,
        batch_size=run.config.eval_batch_size, pgd_steps=pgd_steps, seed=0,
        split_name="val", **strengths)


def measure(run, split, family: str, strengths: list[float], **settings) -> dict[float, float]:
    """Balanced accuracy at each strength."""
    metrics = evaluate(run, split, **settings, **{LADDERS[family][0]: strengths})
    return {s: metrics[f"{family}_{s:g}/balanced_acc"] for s in strengths}


def grid_for(run, split, family: str, clean: float, floor: float,
             **settings) -> tuple[list, dict]:
    """(chosen strengths, every measured point) of one family; `settings`: num_samples and
    pgd_steps of the evaluation."""
    curve = measure(run, split, family, ladder(LADDERS[family][1], 2 ** 0.5, LADDER_STEPS),
                    **settings)
    for _ in range(2):
        if len(choose(curve, clean, floor)) >= MIN_POINTS:
            break
        extra = [s for s in refine(curve, clean, floor) if s not in curve]
        if not extra:
            break
        curve.update(measure(run, split, family, extra, **settings))
    return spread(choose(curve, clean, floor), MAX_POINTS), dict(sorted(curve.items()))
