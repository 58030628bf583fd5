"""Synthetic X-ray-like dataset: determinism, file reuse, prevalence, co-occurrence, patients."""

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from s2mts2.data.adapters.synthetic import FINDINGS, MULTICLASS, make_synthetic
from s2mts2.errors import ConfigError


def _pixels(table) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in table.paths])


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn_big"), n=1200, size=16, seed=0)


def test_same_seed_same_pixels_and_labels(tmp_path):
    a = make_synthetic(tmp_path / "a", n=40, size=32, seed=5)
    b = make_synthetic(tmp_path / "b", n=40, size=32, seed=5)
    c = make_synthetic(tmp_path / "c", n=40, size=32, seed=6)
    pa = _pixels(a)
    assert pa.shape == (40, 32, 32) and pa.dtype == np.uint8
    assert Image.open(a.paths[0]).mode == "L"
    np.testing.assert_array_equal(pa, _pixels(b))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert list(a.groups) == list(b.groups) and list(a.split) == list(b.split)
    assert not np.array_equal(pa, _pixels(c))
    assert pa.std() > 20  # real images, not blank


def test_files_are_reused_or_rewritten(tmp_path):
    a = make_synthetic(tmp_path, n=20, size=16, seed=1)
    stamp = [(tmp_path / "images" / f"syn_{k:05d}.png").stat().st_mtime_ns for k in range(20)]
    again = make_synthetic(tmp_path, n=20, size=16, seed=1)
    assert [
        (tmp_path / "images" / f"syn_{k:05d}.png").stat().st_mtime_ns for k in range(20)
    ] == stamp
    np.testing.assert_array_equal(a.labels, again.labels)
    bigger = make_synthetic(tmp_path, n=12, size=24, seed=1)
    assert _pixels(bigger).shape == (12, 24, 24)
    assert len(list((tmp_path / "images").glob("syn_*.png"))) == 12


def test_multilabel_prevalence_and_cooccurrence(big):
    assert big.classes == FINDINGS and big.task == "multilabel" and big.channels == 1
    prevalence = big.labels.mean(0)
    assert ((prevalence >= 0.1) & (prevalence <= 0.3)).all(), prevalence
    n_findings = big.labels.sum(1)
    assert (n_findings >= 2).mean() > 0.05  # findings co-occur
    assert (n_findings == 0).mean() > 0.2  # and many images are normal


def test_patients_and_split(big):
    _, sizes = np.unique(big.groups, return_counts=True)
    assert set(sizes) <= {1, 2, 3} and (sizes >= 2).mean() > 0.99
    for g in np.unique(big.groups):
        assert len(set(big.split[big.groups == g])) == 1
    share = {s: n / len(big) for s, n in big.counts().items()}
    assert share == pytest.approx({"train": 0.7, "val": 0.1, "test": 0.2}, abs=0.02)


def test_images_of_a_patient_share_anatomy(big):
    """Same-patient images are closer to each other than to other patients' images."""
    x = _pixels(big)[:300].reshape(300, -1).astype(np.float64)
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    corr = x @ x.T / x.shape[1]
    same = big.groups[:300, None] == big.groups[None, :300]
    off = ~np.eye(300, dtype=bool)
    assert corr[same & off].mean() > corr[~same].mean()


def test_findings_are_visible_but_not_linearly_trivial(tmp_path):
    """A linear probe on normalised pixels finds the large findings, yet stays far from
    perfect: a CNN has something to learn and few labels are not enough."""
    t = make_synthetic(tmp_path, n=600, size=32, seed=2)
    x = _pixels(t).reshape(600, -1).astype(np.float64)
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    y = t.labels - t.labels[:400].mean(0)
    w = np.linalg.solve(x[:400].T @ x[:400] + 300.0 * np.eye(x.shape[1]), x[:400].T @ y[:400])
    score = x[400:] @ w  # ridge-regression probe, all findings at once
    auc = {n: roc_auc_score(t.labels[400:, c], score[:, c]) for c, n in enumerate(FINDINGS)}
    assert auc["Cardiomegaly"] > 0.7 and auc["Effusion"] > 0.65, auc
    assert 0.55 < np.mean(list(auc.values())) < 0.8, auc


def test_multiclass_variant(tmp_path):
    t = make_synthetic(tmp_path, n=300, size=16, task="multiclass", seed=0)
    assert t.classes == MULTICLASS and t.task == "multiclass"
    np.testing.assert_array_equal(t.labels.sum(1), 1.0)
    share = t.labels.mean(0)
    assert 0.3 < share[0] < 0.5 and (share[1:] > 0.08).all()


def test_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="task"):
        make_synthetic(tmp_path, n=20, task="segmentation")
    with pytest.raises(ConfigError, match="size"):
        make_synthetic(tmp_path, n=20, size=8)


def test_strength_scales_the_findings_only(tmp_path):
    from PIL import Image

    weak = make_synthetic(tmp_path / "a", n=30, size=32, seed=3)
    strong = make_synthetic(tmp_path / "b", n=30, size=32, seed=3, strength=3.0)
    assert np.array_equal(weak.labels, strong.labels)
    diff = [
        np.abs(
            np.asarray(Image.open(p), dtype=float) - np.asarray(Image.open(q), dtype=float)
        ).mean()
        for p, q in zip(weak.paths, strong.paths)
    ]
    has_finding = np.nansum(weak.labels[:, [0, 1, 3, 4]], axis=1) > 0
    assert np.mean(np.array(diff)[has_finding]) > 2 * np.mean(np.array(diff)[~has_finding]) + 0.1
    with pytest.raises(ConfigError, match="strength"):
        make_synthetic(tmp_path / "c", n=30, size=32, strength=0)
