"""A prepared dataset folder: ``table.csv``/``table.json``, ``cache-<size>px/``, ``labelled/``.

``prepare_dataset`` builds it (adapter -> table -> uint8 cache -> labelled subset -> summary);
``PreparedData.open`` reads it back for training and evaluation.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from s2mts2.config import LabelledDraw
from s2mts2.data.adapters import load_dataset
from s2mts2.data.cache import ImageCache, build_cache
from s2mts2.data.splits import (
    check_labelled,
    labelled_file_name,
    labelled_subset,
    load_labelled,
    save_labelled,
)
from s2mts2.data.table import DatasetTable
from s2mts2.errors import DataError
from s2mts2.files import write_text_atomic

log = logging.getLogger("s2mts2")


def cache_dir(data_dir: Path, size: int) -> Path:
    return data_dir / f"cache-{size}px"


@dataclass
class PreparedData:
    """Table + cache of one prepared folder. ``rows[i]`` is the cache row of table row ``i``."""

    dir: Path
    table: DatasetTable
    cache: ImageCache
    rows: np.ndarray

    @classmethod
    def open(cls, data_dir: str | Path, size: int) -> PreparedData:
        """The folder ``data_dir`` with its cache at ``size`` px (``DataError`` when not built)."""
        d = Path(data_dir)
        table = DatasetTable.load(d)
        cdir = cache_dir(d, size)
        if not cdir.is_dir():
            built = sorted(p.name for p in d.glob("cache-*px"))
            raise DataError(
                f"{d}: no image cache at {size} px (data.size, finetune.size or data.cache_size); "
                f"found {built or 'none'}. Run `s2mts2 prepare ... --out {d} --size {size}`"
            )
        cache = ImageCache.open(cdir)
        return cls(d, table, cache, cache.rows_for(table.paths))

    def labelled(self, draw: LabelledDraw) -> np.ndarray:
        """The labelled subset ``draw`` a training run uses (:meth:`draw_labelled`); the run is
        told when it is another one than ``prepare`` drew."""
        name = labelled_file_name(draw.fraction, draw.count, draw.seed, draw.by_group)
        summary = self.dir / "summary.json"
        prepared = (
            json.loads(summary.read_text()).get("labelled_file") if summary.exists() else None
        )
        if prepared and Path(prepared).name != name:
            log.warning(
                "%s: prepare drew the labelled subset %s; this run draws %s from its data.labelled "
                "/ data.labelled_count / data.split_seed settings",
                self.dir,
                Path(prepared).name,
                name,
            )
        return self.draw_labelled(draw.fraction, draw.count, draw.seed, draw.by_group)

    def draw_labelled(
        self,
        fraction: float | None,
        count: int | None = None,
        seed: int = 0,
        by_group: bool = False,
    ) -> np.ndarray:
        """Sorted table rows of the labelled subset; drawn once per setting and reused from disk."""
        path = self.dir / "labelled" / labelled_file_name(fraction, count, seed, by_group)
        if path.exists():
            return load_labelled(path, self.table, split="train")
        idx = labelled_subset(
            self.table.labels,
            self.table.indices("train"),
            fraction=fraction,
            count=count,
            seed=seed,
            groups=self.table.groups if by_group else None,
        )
        save_labelled(path, self.table, idx)
        return idx

    def images(self) -> np.ndarray:
        """(N_cache, C, H, W) uint8 store."""
        return self.cache.images


def _remove_labelled_lists(data_dir: Path) -> None:
    """Delete the labelled lists drawn from an earlier table of ``data_dir`` (other split/labels)."""
    stale = sorted((data_dir / "labelled").glob("labelled-*.txt"))
    for path in stale:
        path.unlink()
    if stale:
        log.warning(
            "%s: the table changed (images, split or labels), so %d labelled list(s) drawn from "
            "the old table were removed: %s",
            data_dir,
            len(stale),
            ", ".join(p.name for p in stale),
        )


def prepare_dataset(
    name: str,
    root: str | Path,
    out: str | Path,
    *,
    size: int,
    labelled: float | None = None,
    labelled_count: int | None = None,
    seed: int = 0,
    by_group: bool = False,
    workers: int | None = None,
    progress: bool = True,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Adapter -> table -> cache -> labelled subset; writes and returns ``summary.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if name == "synthetic":
        root = out / "synthetic"
    table = load_dataset(name, root, **(options or {}))
    if len(table) == 0:
        raise DataError(f"{name}: no images found under {root}")
    drawn = labelled is not None or labelled_count is not None
    if drawn:  # before hours of decoding, not after
        check_labelled(labelled, labelled_count, len(table.indices("train")))
    cache, failures = build_cache(
        table.paths,
        cache_dir(out, size),
        size=size,
        channels=table.channels,
        workers=workers,
        progress=progress,
    )
    if failures:
        keep = np.array([p not in failures for p in table.paths])  # build_cache named them
        table = replace(
            table,
            paths=[p for p, k in zip(table.paths, keep) if k],
            labels=table.labels[keep],
            groups=table.groups[keep],
            split=table.split[keep],
        )
    previous = (out / "table.csv").read_bytes() if (out / "table.csv").exists() else None
    table.save(out)
    if previous is not None and previous != (out / "table.csv").read_bytes():
        _remove_labelled_lists(out)
    data = PreparedData(out, table, cache, cache.rows_for(table.paths))
    crossing = table.groups_in_several_splits()
    log.log(
        logging.WARNING if crossing else logging.INFO,
        "%s split: %s; %d patients/lesions have images in more than one of train/val/test%s",
        name,
        table.split_source or "the adapter's",
        crossing,
        " (the test split holds some of the training patients/lesions)" if crossing else "",
    )
    summary: dict[str, Any] = {
        "dataset": name,
        "root": str(root),
        "images": table.counts(),
        "classes": table.classes,
        "eval_classes": table.eval_classes,
        "task": table.task,
        "channels": table.channels,
        "size": size,
        "split": table.split_source or None,
        "groups_in_several_splits": crossing,
        "missing_files": table.missing,
        "unreadable_images": len(failures),
        "positives_train": {
            c: int(np.nansum(table.labels[table.indices("train"), j]))
            for j, c in enumerate(table.classes)
        },
    }
    n_train = len(table.indices("train"))
    if drawn:
        idx = data.draw_labelled(labelled, labelled_count, seed, by_group)
        summary.update(
            labelled=len(idx),
            unlabelled=n_train - len(idx),
            labelled_file=str(
                Path("labelled") / labelled_file_name(labelled, labelled_count, seed, by_group)
            ),
            labelled_fraction=labelled,
            seed=seed,
        )
    else:  # stage 2 draws it (data.labelled / --labelled); no count is claimed before
        summary.update(labelled=None, unlabelled=None)
        log.info(
            "no labelled subset drawn (--labelled / --labelled-count): finetune draws one "
            "(data.labelled, default 0.2)"
        )
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
