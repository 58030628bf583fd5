"""Classification metrics: rank-based AUC, SRC-MT / ISIC2018 multi-class metrics, bootstrap CIs.

Inputs are numpy arrays (the accumulator also takes torch tensors); outputs are plain Python
floats, ints and lists, with ``None`` wherever a metric is undefined (e.g. the AUC of a class that
has no positives), so every result is JSON-ready and nothing crashes on a degenerate class.

Label conventions: multi-label targets are ``(N, C)`` floats in {0, 1} with NaN = unknown (that
image is ignored for that class only); multi-class targets are one-hot ``(N, C)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from s2mts2.data.adapters.isic2018 import CLASSES as ISIC2018_CLASSES
from s2mts2.errors import ConfigError, DataError

TASKS = ("multilabel", "multiclass")


class ClassNames(Protocol):
    """Anything naming the classes of the (N, C) columns and those averaged into the mean AUC
    (a :class:`~s2mts2.data.table.DatasetTable`, a read ``predictions.csv``)."""

    classes: list[str]
    eval_classes: list[str]


Statistic = Callable[[np.ndarray, np.ndarray], float | None]


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _ratio(num: int, den: int) -> float | None:
    """num / den as a float, None when den is 0."""
    return float(num / den) if den else None


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"task: expected one of {TASKS}, got {task!r}")


def _check_pair(probs: Any, labels: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert probs (N, C) and labels (N, C) to float64 arrays."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.ndim != 2 or p.shape != y.shape:
        raise DataError(
            f"{where}: expected probs and labels of the same shape (N, C), "
            f"got {p.shape} and {y.shape}"
        )
    if not np.isfinite(p).all():
        rows = np.flatnonzero(~np.isfinite(p).all(axis=1))
        raise DataError(f"{where}: probs contain NaN or inf (first bad row {rows[0]})")
    return p, y


def class_indices(classes: Sequence[str], names: Sequence[str] | None) -> list[int]:
    """Column indices of ``names`` within ``classes`` (all columns when names is None)."""
    if names is None:
        return list(range(len(classes)))
    position = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in names if name not in position]
    if unknown:
        raise ConfigError(f"eval_classes: {unknown} are not among the classes {list(classes)}")
    return [position[name] for name in names]


def _average_ranks_sorted(sorted_scores: np.ndarray) -> np.ndarray:
    """1-based ranks of an ascending (N,) array, tied values sharing the mean of their ranks."""
    n = sorted_scores.size
    starts_group = np.empty(n, dtype=bool)
    starts_group[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=starts_group[1:])
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], n)
    return np.repeat((starts + 1 + ends) / 2.0, ends - starts)


def auc(scores: Any, targets: Any) -> float | None:
    """ROC AUC as the Mann–Whitney U statistic (average ranks for tied scores).

    scores: (N,) finite reals; targets: (N,) in {0, 1}. Returns
    P(score_pos > score_neg) + ½ P(score_pos = score_neg), or None when the targets have no
    positives or no negatives.

    >>> auc([0.1, 0.4, 0.4, 0.9], [0, 0, 1, 1])
    0.875
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if s.ndim != 1 or s.shape != t.shape:
        raise DataError(f"auc: expected scores and targets of shape (N,), got {s.shape}, {t.shape}")
    positive = t == 1
    if not (positive | (t == 0)).all():
        raise DataError("auc: targets must be 0 or 1 (mask unknown labels before calling auc)")
    if not np.isfinite(s).all():
        raise DataError("auc: scores contain NaN or inf")
    n_pos = int(positive.sum())
    n_neg = s.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s)
    ranks = _average_ranks_sorted(s[order])
    u = ranks[positive[order]].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def per_class_auc(probs: Any, labels: Any) -> list[float | None]:
    """AUC of every column. probs (N, C); labels (N, C) in {0, 1} with NaN = unknown.

    Images with an unknown label are left out for that class only; a class whose known labels
    are all 0 or all 1 gets None.
    """
    p, y = _check_pair(probs, labels, "per_class_auc")
    bad = ~(np.isnan(y) | (y == 0) | (y == 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"per_class_auc: labels must be 0, 1 or NaN (unknown); row {row}, "
            f"column {col} holds {y[row, col]}"
        )
    out: list[float | None] = []
    for c in range(p.shape[1]):
        known = ~np.isnan(y[:, c])
        out.append(auc(p[known, c], y[known, c]))
    return out


def mean_auc(
    per_class: Sequence[float | None],
    classes: Sequence[str],
    eval_classes: Sequence[str] | None = None,
) -> float | None:
    """Mean of the per-class AUCs of ``eval_classes`` (all when None), skipping undefined ones."""
    if len(per_class) != len(classes):
        raise DataError(f"mean_auc: {len(per_class)} AUCs for {len(classes)} classes")
    return _mean_or_none([per_class[i] for i in class_indices(classes, eval_classes)])


def table_mean_auc(probs: Any, labels: Any, table: ClassNames) -> float | None:
    """Mean AUC over ``table``'s eval classes of (N, C) probabilities against (N, C) labels."""
    return mean_auc(per_class_auc(probs, labels), table.classes, table.eval_classes)


def _check_onehot(probs: Any, labels_onehot: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) probabilities and one-hot labels as arrays, N > 0; a clear error otherwise."""
    p, y = _check_pair(probs, labels_onehot, name)
    if len(p) == 0:
        raise DataError(f"{name}: no predictions to evaluate (N = 0)")
    if not (((y == 0) | (y == 1)).all() and (y.sum(axis=1) == 1).all()):
        rows = np.flatnonzero(~(((y == 0) | (y == 1)).all(axis=1) & (y.sum(axis=1) == 1)))
        raise DataError(f"{name}: labels must be one-hot rows; row {rows[0]} is {y[rows[0]]}")
    return p, y


def _one_vs_rest(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, n: int | np.ndarray
) -> tuple[list[float | None], ...]:
    """Per-class sensitivity, specificity, precision, F1 and accuracy from (C,) counts of n images
    (an int, or (C,) counts when unknown labels leave out different images per class).

    None where undefined: sensitivity without positives, specificity without negatives, F1 and
    precision of a class neither present nor predicted (a present class never predicted has
    precision 0), accuracy of a class without known labels."""
    n = np.broadcast_to(np.asarray(n), tp.shape)
    tn = n - tp - fp - fn
    positives, predicted = tp + fn, tp + fp
    c = len(tp)
    return (
        [_ratio(tp[k], positives[k]) for k in range(c)],
        [_ratio(tn[k], tn[k] + fp[k]) for k in range(c)],
        [
            _ratio(tp[k], predicted[k]) if predicted[k] else (0.0 if positives[k] else None)
            for k in range(c)
        ],
        [_ratio(2 * tp[k], 2 * tp[k] + fp[k] + fn[k]) for k in range(c)],
        [_ratio(tp[k] + tn[k], n[k]) for k in range(c)],
    )


def confusion_matrix(truth: Any, predicted: Any, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class. truth, predicted: (N,)
    class indices in 0..C-1."""
    t = np.asarray(truth, dtype=np.int64)
    p = np.asarray(predicted, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise DataError(f"confusion_matrix: expected two (N,) arrays, got {t.shape}, {p.shape}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise DataError(f"confusion_matrix: class indices must lie in 0..{n_classes - 1}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def multiclass_metrics(probs: Any, labels_onehot: Any) -> dict[str, Any]:
    """SRC-MT / ISIC2018 metrics of a single-label task. probs (N, C) softmax; labels (N, C) one-hot.

    Predictions are ``argmax(probs)``. Per class (one-vs-rest): AUC, sensitivity (recall),
    specificity, precision and F1. Undefined values are None and are left out of the macro means:
    sensitivity without positives, specificity without negatives, F1 of a class that is neither
    present nor predicted, precision of such a class (a present class that is never predicted has
    precision 0). So ``sensitivity`` (macro) equals the balanced accuracy (ISIC2018 challenge
    metric), and macro F1 / precision equal scikit-learn's with ``zero_division=0``.

    Returns macro_auc, accuracy, balanced_accuracy, sensitivity, specificity, precision, f1 (floats
    or None) and per_class_auc, per_class_sensitivity, per_class_specificity, per_class_precision,
    per_class_f1 (lists of length C) and confusion_matrix (C lists of C counts, row = true class).
    """
    p, y = _check_onehot(probs, labels_onehot, "multiclass_metrics")
    n, c = p.shape
    truth = y.argmax(axis=1)
    pred = p.argmax(axis=1)
    confusion = confusion_matrix(truth, pred, c)
    tp = np.diag(confusion)
    sensitivity, specificity, precision, f1, _ = _one_vs_rest(
        tp, confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp, n
    )
    aucs = per_class_auc(p, y)
    return {
        "macro_auc": _mean_or_none(aucs),
        "accuracy": float(np.mean(pred == truth)),
        "balanced_accuracy": _mean_or_none(sensitivity),
        "sensitivity": _mean_or_none(sensitivity),
        "specificity": _mean_or_none(specificity),
        "precision": _mean_or_none(precision),
        "f1": _mean_or_none(f1),
        "per_class_auc": aucs,
        "per_class_sensitivity": sensitivity,
        "per_class_specificity": specificity,
        "per_class_precision": precision,
        "per_class_f1": f1,
        "confusion_matrix": confusion.tolist(),
    }


SRC_MT_THRESHOLD = 0.18  # SRC-MT's released evaluation predicts a class where p >= 0.18


def uses_src_mt_classes(classes: Sequence[str]) -> bool:
    """True for the ISIC2018 classes, the only task SRC-MT's p >= 0.18 evaluation was made for."""
    return sorted(classes) == sorted(ISIC2018_CLASSES)


def thresholded_metrics(probs: Any, labels: Any, thresholds: Sequence[float]) -> dict[str, Any]:
    """One-vs-rest metrics of each class predicted where its probability is ``≥`` its threshold.

    probs (N, C); labels (N, C) in {0, 1} with NaN = unknown (left out for that class);
    thresholds (C,). Returns sensitivity, specificity, precision, f1, accuracy (macro means of
    the defined values, as in :func:`multiclass_metrics`) and per_class_<name> lists of length C.
    """
    p, y = _check_pair(probs, labels, "thresholded_metrics")
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (p.shape[1],) or not np.isfinite(t).all():
        raise DataError(
            f"thresholded_metrics: expected {p.shape[1]} finite thresholds, got {t.tolist()}"
        )
    known = ~np.isnan(y)
    pred, truth = (p >= t) & known, (y == 1) & known
    tp = (pred & truth).sum(axis=0)
    fp = (pred & ~truth).sum(axis=0)
    fn = (~pred & truth).sum(axis=0)
    names = ("sensitivity", "specificity", "precision", "f1", "accuracy")
    per_class = dict(zip(names, _one_vs_rest(tp, fp, fn, known.sum(axis=0))))
    return {
        **{name: _mean_or_none(per_class[name]) for name in names},
        **{f"per_class_{name}": per_class[name] for name in names},
    }


def src_mt_metrics(
    probs: Any, labels_onehot: Any, threshold: float = SRC_MT_THRESHOLD
) -> dict[str, Any]:
    """SRC-MT's own multi-class evaluation, for comparison with published SRC-MT / S²MTS² tables.

    Per class, one-vs-rest, the class is predicted where its probability is ``≥ threshold`` (so
    an image may get several classes or none); accuracy, sensitivity, specificity, precision and
    F1 of each class are macro-averaged (:func:`thresholded_metrics`). probs (N, C) softmax;
    labels (N, C) one-hot. The threshold was tuned for the seven ISIC2018 classes: on other
    tasks the numbers mean little (:func:`uses_src_mt_classes`).

    Returns threshold, accuracy, sensitivity, specificity, precision, f1 (floats or None) and
    per_class_accuracy, per_class_sensitivity, ... (lists of length C).
    """
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"src_mt_metrics: threshold must be in (0, 1), got {threshold}")
    p, y = _check_onehot(probs, labels_onehot, "src_mt_metrics")
    return {"threshold": float(threshold), **thresholded_metrics(p, y, [threshold] * p.shape[1])}


def youden_threshold(scores: Any, targets: Any) -> float | None:
    """The threshold t maximising Youden's J = sensitivity − (1 − specificity) of ``score ≥ t``.

    scores (N,) finite; targets (N,) in {0, 1}. Candidates are the observed scores; among equal
    J the highest threshold wins. None without positives or without negatives.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if s.ndim != 1 or s.shape != y.shape or not np.isin(y, (0.0, 1.0)).all():
        raise DataError(
            f"youden_threshold: expected (N,) scores and 0/1 targets, got {s.shape}, {y.shape}"
        )
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_value = np.append(s[1:] != s[:-1], True)  # predicting ≥ s[i] takes all rows up to i
    tp = np.cumsum(y)[last_of_value]
    fp = np.cumsum(1.0 - y)[last_of_value]
    j = tp / n_pos - fp / n_neg
    return float(s[last_of_value][int(np.argmax(j))])


def youden_thresholds(probs: Any, labels: Any) -> list[float | None]:
    """:func:`youden_threshold` of each column. probs (N, C); labels (N, C), NaN = unknown."""
    p, y = _check_pair(probs, labels, "youden_thresholds")
    out = []
    for c in range(p.shape[1]):
        known = ~np.isnan(y[:, c])
        out.append(youden_threshold(p[known, c], y[known, c]))
    return out


THRESHOLD_KEYS = ("sensitivity", "specificity", "precision", "f1")


def threshold_evaluation(
    reference_probs: Any, reference_labels: Any, probs: Any, labels: Any, classes: Sequence[str]
) -> dict[str, Any]:
    """Per-class Youden thresholds chosen on a reference set, applied to the evaluated one.

    reference_probs / reference_labels (M, C) choose the thresholds; probs / labels (N, C) are
    scored at them (labels {0, 1, NaN}). A class the reference cannot place (no positives or no
    negatives) gets no threshold and no metrics. Returns ``{"method": "youden", "per_class":
    {class: {threshold, sensitivity, specificity, precision, f1}}, "sensitivity", ...}`` (macro
    means of the defined values).
    """
    chosen = youden_thresholds(reference_probs, reference_labels)
    p, y = _check_pair(probs, labels, "threshold_evaluation")
    if len(chosen) != p.shape[1] or len(classes) != p.shape[1]:
        raise DataError(
            f"threshold_evaluation: {len(chosen)} reference columns, {p.shape[1]} evaluated "
            f"columns, {len(classes)} classes"
        )
    placed = [c for c, t in enumerate(chosen) if t is not None]
    scored = thresholded_metrics(p[:, placed], y[:, placed], [chosen[c] for c in placed])
    per_class: dict[str, dict[str, float | None]] = {
        name: {"threshold": None, **dict.fromkeys(THRESHOLD_KEYS)} for name in classes
    }
    for i, c in enumerate(placed):
        per_class[classes[c]] = {
            "threshold": chosen[c],
            **{key: scored[f"per_class_{key}"][i] for key in THRESHOLD_KEYS},
        }
    return {
        "method": "youden",
        "per_class": per_class,
        **{key: scored[key] if placed else None for key in THRESHOLD_KEYS},
    }


def _index_sampler(n: int, groups: Any | None) -> Callable[[np.random.Generator], np.ndarray]:
    """A function drawing one bootstrap sample of row indices: n rows, or all the groups once each
    with replacement (each chosen group contributing all its rows) when groups (N,) are given."""
    if groups is None:
        return lambda rng: rng.integers(0, n, size=n)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise DataError(f"bootstrap_ci: expected groups of shape ({n},), got {g.shape}")
    _, group_of_row = np.unique(g, return_inverse=True)
    rows_by_group = np.argsort(group_of_row, kind="stable")
    sizes = np.bincount(group_of_row)
    starts = np.cumsum(sizes) - sizes

    def draw(rng: np.random.Generator) -> np.ndarray:
        chosen = rng.integers(0, sizes.size, size=sizes.size)
        lengths = sizes[chosen]
        block_begin = np.cumsum(lengths) - lengths
        shift = np.repeat(starts[chosen] - block_begin, lengths)
        return rows_by_group[shift + np.arange(lengths.sum())]

    return draw


def bootstrap_ci(
    probs: Any,
    labels: Any,
    statistic: Statistic,
    *,
    groups: Any | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap (1 − alpha) confidence interval of ``statistic(probs, labels)``.

    probs, labels: arrays with N rows. groups: (N,) ids (e.g. patients); when given, whole groups
    are resampled so that images of one patient stay together. Replicates where the statistic is
    None (e.g. a class without positives) are skipped; (None, None) when all are.
    """
    if n_boot < 1:
        raise ConfigError(f"n_boot: expected at least 1 bootstrap replicate, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha: expected a value in (0, 1), got {alpha}")
    p = np.asarray(probs)
    y = np.asarray(labels)
    if len(p) != len(y):
        raise DataError(f"bootstrap_ci: {len(p)} rows of probs but {len(y)} rows of labels")
    draw = _index_sampler(len(p), groups)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        rows = draw(rng)
        value = statistic(p[rows], y[rows])
        if value is not None:
            values.append(value)
    if not values:
        return None, None
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def paired_auc_difference(
    probs_a: Any,
    probs_b: Any,
    labels: Any,
    table: ClassNames,
    *,
    groups: Any | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean AUC (``table``'s eval classes) of two models' (N, C) probabilities on the same images
    and a paired percentile bootstrap 95 % CI of a − b: each replicate resamples the images (whole
    ``groups`` when given) once and scores both models on them.

    Returns ``{"mean_auc_a", "mean_auc_b", "difference", "difference_ci95": [low, high]}``.
    """
    a, b = np.asarray(probs_a), np.asarray(probs_b)
    if a.shape != b.shape:
        raise DataError(f"paired_auc_difference: probabilities {a.shape} and {b.shape} differ")
    c = a.shape[1]

    def difference(p: np.ndarray, y: np.ndarray) -> float | None:
        auc_a, auc_b = table_mean_auc(p[:, :c], y, table), table_mean_auc(p[:, c:], y, table)
        return None if auc_a is None or auc_b is None else auc_a - auc_b

    auc_a, auc_b = table_mean_auc(a, labels, table), table_mean_auc(b, labels, table)
    low, high = bootstrap_ci(
        np.concatenate([a, b], axis=1), labels, difference, groups=groups, n_boot=n_boot, seed=seed
    )
    return {
        "mean_auc_a": auc_a,
        "mean_auc_b": auc_b,
        "difference": None if auc_a is None or auc_b is None else auc_a - auc_b,
        "difference_ci95": [low, high],
    }


def seeds_paired_auc_difference(
    probs_a: Any,
    probs_b: Any,
    labels: Any,
    table: ClassNames,
    *,
    groups: Any | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired mean-AUC difference a − b of two methods trained with S seeds each, seed s of both
    on the same labelled subset, all scored on the same N test images.

    probs_a, probs_b: (S, N, C) probabilities, row s of both from seed s; labels (N, C);
    groups (N,) ids (e.g. lesions) resampled whole. The estimate is the mean over the seeds of
    the per-seed difference of mean AUC (``table``'s eval classes). Its percentile bootstrap 95 %
    CI resamples both sources of variation: each replicate draws S seeds with replacement and one
    resample of the test images (whole groups) shared by the drawn seeds, and averages their
    differences on it. Each seed also gets its own paired CI (:func:`paired_auc_difference`, the
    test images only).

    Returns ``{"difference", "difference_ci95": [low, high], "per_seed": [{"mean_auc_a",
    "mean_auc_b", "difference", "difference_ci95"}, ...]}`` (S entries, in seed order).
    """
    a, b = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if a.ndim != 3 or a.shape != b.shape:
        raise DataError(
            f"seeds_paired_auc_difference: expected probabilities (S, N, C) of the same shape, "
            f"got {a.shape} and {b.shape}"
        )
    n_seeds, n, c = a.shape
    per_seed = [
        paired_auc_difference(a[s], b[s], labels, table, groups=groups, n_boot=n_boot, seed=seed)
        for s in range(n_seeds)
    ]
    # (N, S·2C): the columns of seed s are a[s] then b[s], so one row resample serves every seed
    stacked = np.concatenate([np.concatenate([a[s], b[s]], axis=1) for s in range(n_seeds)], 1)
    seed_draws = np.random.default_rng([seed, 1])  # the seeds' own stream, one draw per replicate

    def mean_difference(p: np.ndarray, y: np.ndarray) -> float | None:
        drawn, counts = np.unique(seed_draws.integers(0, n_seeds, n_seeds), return_counts=True)
        total = 0.0
        for s, count in zip(drawn, counts):
            block = p[:, 2 * c * s : 2 * c * (s + 1)]
            auc_a = table_mean_auc(block[:, :c], y, table)
            auc_b = table_mean_auc(block[:, c:], y, table)
            if auc_a is None or auc_b is None:
                return None
            total += count * (auc_a - auc_b)
        return total / n_seeds

    low, high = bootstrap_ci(
        stacked, labels, mean_difference, groups=groups, n_boot=n_boot, seed=seed
    )
    differences = [r["difference"] for r in per_seed]
    return {
        "difference": None if None in differences else float(np.mean(differences)),
        "difference_ci95": [low, high],
        "per_seed": per_seed,
    }


def evaluate_predictions(
    probs: Any,
    labels: Any,
    *,
    classes: Sequence[str],
    eval_classes: Sequence[str] | None = None,
    task: str = "multilabel",
    groups: Any | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of one evaluation as a JSON-ready dict.

    probs (N, C); labels (N, C): {0, 1, NaN} for "multilabel", one-hot for "multiclass".
    eval_classes: the classes averaged into ``mean_auc`` (all when None; ChestX-ray14 leaves out
    "No Finding"). groups (N,): patient ids for a grouped bootstrap. n_boot = 0 skips the CI.

    Keys: task, n_images, classes, eval_classes, positives {class: n}, per_class_auc
    {class: float|None}, mean_auc, mean_auc_ci95 ([lo, hi] or None); for "multiclass" also
    macro_auc (= mean_auc), accuracy, balanced_accuracy, sensitivity, specificity, precision, f1
    (of argmax predictions), per_class {class: {auc, sensitivity, specificity, precision, f1}},
    confusion_matrix (C lists of C counts, row = true class, column = predicted class) and, for
    the ISIC2018 classes only, src_mt {threshold, accuracy, sensitivity, specificity, precision,
    f1} (SRC-MT's evaluation, :func:`src_mt_metrics`).
    """
    _check_task(task)
    p, y = _check_pair(probs, labels, "evaluate_predictions")
    if len(p) == 0:
        raise DataError("evaluate_predictions: no predictions to evaluate (N = 0)")
    if p.shape[1] != len(classes):
        raise DataError(
            f"evaluate_predictions: probs have {p.shape[1]} columns for {len(classes)} classes"
        )
    names = list(classes)
    columns = class_indices(names, eval_classes)
    aucs = per_class_auc(p, y)
    result: dict[str, Any] = {
        "task": task,
        "n_images": int(len(p)),
        "classes": names,
        "eval_classes": [names[i] for i in columns],
        "positives": {name: int(np.sum(y[:, i] == 1)) for i, name in enumerate(names)},
        "per_class_auc": dict(zip(names, aucs)),
        "mean_auc": mean_auc(aucs, names, [names[i] for i in columns]),
        "mean_auc_ci95": None,
    }
    if n_boot > 0:
        low, high = bootstrap_ci(
            p[:, columns],
            y[:, columns],
            lambda ps, ys: _mean_or_none(per_class_auc(ps, ys)),
            groups=groups,
            n_boot=n_boot,
            seed=seed,
        )
        result["mean_auc_ci95"] = None if low is None else [low, high]
    if task == "multiclass":
        mc = multiclass_metrics(p, y)
        result["macro_auc"] = result["mean_auc"]
        for key in (
            "accuracy",
            "balanced_accuracy",
            "sensitivity",
            "specificity",
            "precision",
            "f1",
        ):
            result[key] = mc[key]
        result["per_class"] = {
            name: {
                "auc": aucs[i],
                "sensitivity": mc["per_class_sensitivity"][i],
                "specificity": mc["per_class_specificity"][i],
                "precision": mc["per_class_precision"][i],
                "f1": mc["per_class_f1"][i],
            }
            for i, name in enumerate(names)
        }
        result["confusion_matrix"] = mc["confusion_matrix"]
        if uses_src_mt_classes(names):
            srcmt = src_mt_metrics(p, y)
            result["src_mt"] = {k: v for k, v in srcmt.items() if not k.startswith("per_class_")}
    return result


def _to_numpy(x: Any) -> np.ndarray:
    """A tensor (any device / dtype) or array-like as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


class MetricAccumulator:
    """Collects predictions batch by batch; ``aggregate()`` evaluates them all (MONAI style).

    >>> acc = MetricAccumulator(["a", "b"], task="multilabel")
    >>> acc.update(torch.tensor([[0.9, 0.2], [0.1, 0.7]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    >>> acc.aggregate()["mean_auc"]
    1.0
    """

    def __init__(
        self,
        classes: Sequence[str],
        eval_classes: Sequence[str] | None = None,
        task: str = "multilabel",
    ) -> None:
        _check_task(task)
        class_indices(classes, eval_classes)
        self.classes = list(classes)
        self.eval_classes = None if eval_classes is None else list(eval_classes)
        self.task = task
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def __len__(self) -> int:
        """Number of images collected so far."""
        return sum(len(p) for p in self._probs)

    def update(self, probs: Any, labels: Any) -> None:
        """Add a batch. probs (B, C); labels (B, C) as in evaluate_predictions, or for
        "multiclass" also (B,) integer class indices."""
        p = _to_numpy(probs)
        y = _to_numpy(labels)
        c = len(self.classes)
        if self.task == "multiclass" and y.ndim == 1:
            if not np.isin(y, np.arange(c)).all():
                raise DataError(f"MetricAccumulator.update: class indices must be in 0..{c - 1}")
            y = np.eye(c)[y.astype(np.int64)]
        if p.ndim != 2 or p.shape[1] != c or p.shape != y.shape:
            raise DataError(
                f"MetricAccumulator.update: expected probs and labels of shape (B, {c}), "
                f"got {p.shape} and {y.shape}"
            )
        self._probs.append(p)
        self._labels.append(y)

    def reset(self) -> None:
        """Forget everything collected."""
        self._probs.clear()
        self._labels.clear()

    def aggregate(self, *, groups: Any | None = None, n_boot: int = 0, seed: int = 0) -> dict:
        """evaluate_predictions on everything collected (no bootstrap CI unless n_boot > 0)."""
        if not self._probs:
            raise DataError("MetricAccumulator.aggregate: no predictions were added")
        return evaluate_predictions(
            np.concatenate(self._probs),
            np.concatenate(self._labels),
            classes=self.classes,
            eval_classes=self.eval_classes,
            task=self.task,
            groups=groups,
            n_boot=n_boot,
            seed=seed,
        )
