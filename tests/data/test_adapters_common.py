"""Helpers shared by the adapters: file indexing and the existence check."""

import os

import numpy as np

from s2mts2.data.adapters.common import existing, index_files


def test_index_files_first_folder_wins_and_absent_folders_are_skipped(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        (tmp_path / folder / "x.png").write_bytes(b"")
    (tmp_path / "b" / "y.png").write_bytes(b"")
    found = index_files([tmp_path / "nope", tmp_path / "b", tmp_path / "a"])
    assert found == {"x.png": str(tmp_path / "b" / "x.png"), "y.png": str(tmp_path / "b" / "y.png")}


def test_existing_matches_os_path_isfile(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    for rel in ("d/1.png", "d/e/2.png", "3.png"):
        (tmp_path / rel).write_bytes(b"")
    rels = ["d/1.png", "d/e/2.png", "3.png", "d/e", "d/missing.png", "gone/1.png", "d/1.png/x"]
    paths = [os.path.join(tmp_path, r) for r in rels]
    assert np.array_equal(existing(paths), [os.path.isfile(p) for p in paths])
