"""Dataset adapters: each turns a dataset folder into a ``DatasetTable``.

``load_dataset(name, root, **options)`` is the single entry point; ``ADAPTERS`` maps the
names to the loaders (their keyword-only parameters are the options).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import get_type_hints

from s2mts2.config import parse_value
from s2mts2.data.adapters.chestxray14 import load_chestxray14
from s2mts2.data.adapters.chexpert import load_chexpert
from s2mts2.data.adapters.csvfolder import load_csv
from s2mts2.data.adapters.isic2018 import load_isic2018
from s2mts2.data.adapters.synthetic import make_synthetic
from s2mts2.data.table import DatasetTable
from s2mts2.errors import ConfigError

ADAPTERS: dict[str, Callable[..., DatasetTable]] = {
    "chestxray14": load_chestxray14,
    "chexpert": load_chexpert,
    "isic2018": load_isic2018,
    "csv": load_csv,
    "synthetic": make_synthetic,
}


def adapter_options(name: str) -> dict[str, object]:
    """Option name -> default (``inspect.Parameter.empty`` when required) of adapter ``name``."""
    params = inspect.signature(ADAPTERS[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def parse_option(name: str, key: str, text: str) -> object:
    """The value of ``--option key=text`` for adapter ``name`` (``config.parse_value``: column
    and file names as typed, ``group_column=2024`` names the column ``2024``)."""
    hint = get_type_hints(ADAPTERS[name]).get(key) if name in ADAPTERS else None
    return parse_value(text, hint, f"--option {key}")


def load_dataset(name: str, root: str | Path, **options: object) -> DatasetTable:
    """Load dataset ``name`` from ``root`` (the output folder for ``synthetic``).

    Raises:
        ConfigError: unknown dataset name, unknown option, or a required option missing.
    """
    if name not in ADAPTERS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(ADAPTERS)}")
    known = adapter_options(name)
    for key in options:
        if key not in known:
            raise ConfigError(
                f"dataset {name}: unknown option {key!r}; valid options: {', '.join(known) or 'none'}"
            )
    for key, default in known.items():
        if default is inspect.Parameter.empty and key not in options:
            raise ConfigError(f"dataset {name}: option {key!r} is required")
    return ADAPTERS[name](root, **options)
