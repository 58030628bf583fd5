"""Shared fixtures: the real data folder (../shared/data next to the repository), skipped when absent."""

from pathlib import Path

import pytest

from s2mts2.data.prepared import prepare_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when it is not there (as on a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared synthetic dataset for the ``tiny`` preset: 160 images, 16 px cache."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    prepare_dataset(
        "synthetic",
        out,
        out,
        size=16,
        labelled=0.15,
        progress=False,
        options={"n": 160, "size": 32},
        workers=1,
    )
    return out
