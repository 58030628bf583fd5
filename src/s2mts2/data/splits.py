"""Patient-grouped train/val/test splits and the per-class labelled-subset protocol.

``grouped_split`` keeps every group (patient, lesion) inside one split and balances classes
across splits; ``labelled_subset`` draws the labelled part of the training images the way the
paper does (docs/method.md): per class, a seeded shuffle of the training images carrying it, take the
fraction, union over classes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from s2mts2.data.table import SPLITS, DatasetTable
from s2mts2.errors import ConfigError, DataError
from s2mts2.files import write_text_atomic


def _positive(labels: np.ndarray) -> np.ndarray:
    """(N, C) bool: label == 1 (NaN and 0 are not positive)."""
    return np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0) == 1.0


def _strata(labels: np.ndarray) -> np.ndarray:
    """(N, C+1) bool: the classes plus one stratum for images without any positive label."""
    pos = _positive(labels)
    return np.concatenate([pos, ~pos.any(axis=1, keepdims=True)], axis=1)


def grouped_split_name(groups: str, seed: int, fractions: str = "70/10/20") -> str:
    """How :func:`grouped_split` made a split, for ``DatasetTable.split_source``."""
    return f"grouped by {groups}, class-stratified {fractions}, seed {seed}"


def grouped_split(
    groups: np.ndarray,
    labels: np.ndarray | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> np.ndarray:
    """Assign each row to ``train``/``val``/``test`` with no group in two splits.

    Greedy iterative stratification over groups: groups are visited rarest-class first (random
    order within a class, by ``seed``) and each goes to the split that still needs most of that
    class, ties broken by the split that still needs most images.

    Args:
        groups: (N,) group id per row.
        labels: (N, C) one-hot / multi-hot labels (NaN = unknown) or None (size balance only).
        fractions: target shares of train, val, test (non-negative, summing to 1).
        seed: order of the groups.

    Returns:
        (N,) str array of split names.
    """
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.shape != (3,) or (frac < 0).any() or not math.isclose(frac.sum(), 1.0, abs_tol=1e-6):
        raise ConfigError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    groups = np.asarray(groups).astype(str)
    n = len(groups)
    if labels is None:
        labels = np.zeros((n, 0), dtype=np.float32)
    strata = _strata(labels).astype(np.float64)
    uniq, inverse = np.unique(groups, return_inverse=True)
    g_count = np.zeros((len(uniq), strata.shape[1]))
    np.add.at(g_count, inverse, strata)
    g_size = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)

    # Visit order: by the rarest stratum a group carries, random within (seeded).
    totals = g_count.sum(axis=0)
    rarity = np.where(g_count > 0, totals[None, :], np.inf)
    rarest = rarity.argmin(axis=1)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    order = perm[np.argsort(totals[rarest[perm]], kind="stable")]

    need_class = frac[:, None] * totals[None, :]
    need_size = frac * n
    assign = np.empty(len(uniq), dtype=np.int64)
    for g in order:
        c = rarest[g]
        # Positives of c not yet placed (>= this group's) are still needed by some split with a
        # share > 0, so a split with share 0 never reaches the maximum.
        score = need_class[:, c]
        best = np.flatnonzero(score == score.max())
        s = best[np.argmax(need_size[best])]
        assign[g] = s
        need_class[s] -= g_count[g]
        need_size[s] -= g_size[g]
    return np.asarray(SPLITS)[assign[inverse]]


def _by_stratum(
    strata: np.ndarray, units: np.ndarray, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per stratum: units (images or groups) carrying it in seeded random order, with the
    cumulative number of positive images they hold."""
    out = []
    for c in range(strata.shape[1]):
        rows = np.flatnonzero(strata[:, c])
        u, cnt = np.unique(units[rows], return_counts=True)
        p = rng.permutation(len(u))
        out.append((u[p], np.cumsum(cnt[p])))
    return out


def _take(per_stratum: list[tuple[np.ndarray, np.ndarray]], fraction: float) -> np.ndarray:
    """Union of units: per stratum, the shortest prefix covering ceil(fraction x positives)."""
    chosen = []
    for u, cum in per_stratum:
        if len(u) == 0:
            continue
        k = max(1, math.ceil(fraction * cum[-1] - 1e-9))
        chosen.append(u[: np.searchsorted(cum, k) + 1])
    return np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def check_labelled(fraction: float | None, count: int | None, n_train: int) -> None:
    """ConfigError unless exactly one of a fraction in (0, 1] and a count in [1, n_train] is
    given (``n_train``: the training images)."""
    if (fraction is None) == (count is None):
        raise ConfigError("give exactly one of --labelled (fraction) or --labelled-count")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--labelled must be a fraction in (0, 1], got {fraction}")
    if count is not None and not 1 <= count <= n_train:
        raise ConfigError(
            f"--labelled-count must be in [1, {n_train}] (training images), got {count}"
        )


def labelled_subset(
    labels: np.ndarray,
    train_idx: np.ndarray,
    *,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Labelled training rows, drawn per class as in the paper.

    For each class, the training images with label 1 are shuffled (seeded) and the first
    ``ceil(fraction x positives)`` are taken (at least one per class that has positives); the
    labelled set is the union. Training images without any positive label form one more
    stratum, sampled the same way, so all-negative images are represented too (empty for
    ChestX-ray14, which has ``No Finding``, and for one-hot labels). With ``groups``, whole
    groups (patients) are drawn until each class's share of positive images is covered.
    With ``count``, the fraction is searched so that the union is as close to ``count`` images
    as the per-class steps allow (exact in most cases).

    Args:
        labels: (N, C) labels of the whole table (NaN = unknown, not positive).
        train_idx: (n_train,) row indices of the training split.
        fraction: share of each class's positives, in (0, 1].
        count: absolute number of labelled images, in [1, n_train].
        seed: shuffling seed.
        groups: (N,) group ids to sample whole groups, or None for images.

    Returns:
        (n_labelled,) sorted int64 row indices into the table.
    """
    train_idx = np.asarray(train_idx, dtype=np.int64)
    n_train = len(train_idx)
    check_labelled(fraction, count, n_train)
    strata = _strata(np.asarray(labels)[train_idx])
    if groups is None:
        units = np.arange(n_train)
    else:
        units = np.unique(np.asarray(groups).astype(str)[train_idx], return_inverse=True)[1]
    per_stratum = _by_stratum(strata, units, np.random.default_rng(seed))

    def rows(f: float) -> np.ndarray:
        return np.sort(train_idx[np.isin(units, _take(per_stratum, f))])

    if fraction is not None:
        return rows(fraction)
    lo, hi = 0.0, 1.0  # invariant: len(rows(hi)) >= count (all images at f = 1)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if len(rows(mid)) >= count:
            hi = mid
        else:
            lo = mid
    below, above = rows(lo), rows(hi)
    return below if 0 < count - len(below) < len(above) - count else above


def labelled_file_name(
    fraction: float | None = None, count: int | None = None, seed: int = 0, by_group: bool = False
) -> str:
    """File name of a labelled list, e.g. ``labelled-f0.2-s0.txt`` or ``labelled-n1400-s0-g.txt``."""
    if (fraction is None) == (count is None):
        raise ConfigError("give exactly one of --labelled (fraction) or --labelled-count")
    amount = f"f{fraction:g}" if fraction is not None else f"n{int(count)}"
    return f"labelled-{amount}-s{seed}{'-g' if by_group else ''}.txt"


def save_labelled(path: str | Path, table: DatasetTable, idx: np.ndarray) -> None:
    """Write the image paths of rows ``idx`` (one per line, in row order)."""
    rows = np.unique(np.asarray(idx, np.int64))
    write_text_atomic(path, "".join(table.paths[i] + "\n" for i in rows))


def load_labelled(path: str | Path, table: DatasetTable, split: str | None = None) -> np.ndarray:
    """Read a list written by ``save_labelled`` back into sorted int64 row indices.

    With ``split`` every listed image must be in that split of ``table`` (a list drawn from an
    earlier table could otherwise put validation or test images into training).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labelled list not found")
    where = {p: i for i, p in enumerate(table.paths)}
    idx = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        p = line.strip()
        if not p:
            continue
        if p not in where:
            raise DataError(f"{path}, line {line_no}: image {p} is not in the {table.name} table")
        if split is not None and table.split[where[p]] != split:
            raise DataError(
                f"{path}, line {line_no}: image {p} is in the '{table.split[where[p]]}' split, "
                f"not '{split}': the list was drawn from another table. Delete it to draw the "
                f"labelled subset again from the current table"
            )
        idx.append(where[p])
    return np.unique(np.asarray(idx, dtype=np.int64))
