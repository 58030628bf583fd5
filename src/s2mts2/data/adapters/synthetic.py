"""Synthetic X-ray-like grey-scale images with subtle, co-occurring findings (numpy only).

Each patient has an anatomy (body, two lung fields, heart, spine, rib texture) shared by their
2-3 images; each image gets its own pose, contrast, brightness, gamma and noise. Findings are
small or low-contrast and vary in position and size, so a few labels are not enough to learn
them well and unlabelled images can help.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from s2mts2.data.adapters.common import check_choice
from s2mts2.data.splits import grouped_split, grouped_split_name
from s2mts2.data.table import DatasetTable
from s2mts2.errors import ConfigError
from s2mts2.files import write_text_atomic

FINDINGS = ["Nodule", "Effusion", "Cardiomegaly", "Pneumothorax", "Opacity"]
MULTICLASS = ["Normal", "Nodule", "Effusion", "Cardiomegaly", "Pneumothorax"]
MULTICLASS_P = [0.4, 0.15, 0.15, 0.15, 0.15]
VERSION = 1
CHUNK = 128


def _patients(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) patient index per image: consecutive runs of 2 or 3 images."""
    sizes = rng.choice([2, 3], size=n // 2 + 1)
    return np.repeat(np.arange(len(sizes)), sizes)[:n]


def _labels(rng: np.random.Generator, patient: np.ndarray, task: str) -> np.ndarray:
    """(n, C) one-hot / multi-hot labels. Multi-label prevalences: nodule 18 %, effusion 20 %
    (40 % with cardiomegaly, 15 % without), cardiomegaly 20 % (a patient trait), pneumothorax
    15 %, opacity 22 % (more likely with effusion)."""
    n = len(patient)
    if task == "multiclass":
        return np.eye(len(MULTICLASS), dtype=np.float32)[rng.choice(5, size=n, p=MULTICLASS_P)]
    y = np.zeros((n, len(FINDINGS)), dtype=np.float32)
    cardio = rng.random(patient.max() + 1) < 0.2
    y[:, 2] = cardio[patient]
    y[:, 1] = rng.random(n) < np.where(cardio[patient], 0.4, 0.15)
    y[:, 0] = rng.random(n) < 0.18
    y[:, 3] = rng.random(n) < 0.15
    y[:, 4] = rng.random(n) < 0.2 + 0.1 * y[:, 1]
    return y


def _params(rng: np.random.Generator, patient: np.ndarray) -> dict[str, np.ndarray]:
    """(n,) arrays of anatomy (per patient) and pose/finding geometry (per image)."""
    n, p = len(patient), patient.max() + 1

    def per_patient(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, p)[patient]

    def per_image(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n)

    return {
        "body_w": per_patient(0.72, 0.86),
        "body_h": per_patient(0.95, 1.12),
        "lung_x": per_patient(0.3, 0.38),
        "lung_y": per_patient(-0.14, 0.0),
        "lung_rx": per_patient(0.21, 0.27),
        "lung_ry": per_patient(0.45, 0.56),
        "heart_x": per_patient(0.04, 0.12),
        "heart_y": per_patient(0.2, 0.3),
        "heart_ry": per_patient(0.2, 0.26),
        "ctr": per_patient(0.36, 0.48),
        "ctr_big": per_patient(0.47, 0.6),
        "rib_f": per_patient(5.0, 7.0),
        "rib_phase": per_patient(0.0, 2 * np.pi),
        "rot": rng.normal(0.0, 0.08, n),
        "dx": per_image(-0.07, 0.07),
        "dy": per_image(-0.07, 0.07),
        "scale": per_image(0.9, 1.08),
        "contrast": per_image(0.7, 1.3),
        "bright": per_image(-0.1, 0.1),
        "gamma": per_image(0.8, 1.25),
        "noise": per_image(0.01, 0.035),
        # findings: side (0 = image left lung, 1 = right), position in the lung, size, strength
        "nod_side": rng.integers(0, 2, n).astype(np.float64),
        "nod_r": np.sqrt(per_image(0.0, 0.6)),
        "nod_t": per_image(0.0, 2 * np.pi),
        "nod_s": per_image(0.045, 0.075),
        "nod_a": per_image(0.1, 0.18),
        "eff_side": rng.integers(0, 2, n).astype(np.float64),
        "eff_h": per_image(0.15, 0.4),
        "eff_a": per_image(0.12, 0.24),
        "ptx_side": rng.integers(0, 2, n).astype(np.float64),
        "ptx_w": per_image(0.12, 0.25),
        "ptx_a": per_image(0.06, 0.12),
        "opa_side": rng.integers(0, 2, n).astype(np.float64),
        "opa_r": np.sqrt(per_image(0.0, 0.5)),
        "opa_t": per_image(0.0, 2 * np.pi),
        "opa_s": per_image(0.12, 0.22),
        "opa_a": per_image(0.08, 0.15),
    }


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _smooth_noise(rng: np.random.Generator, b: int, size: int, cells: int = 8) -> np.ndarray:
    """(b, size, size) smooth random field: a cells x cells grid, bilinearly upsampled."""
    pos = np.linspace(0, cells - 1, size)
    lo = np.minimum(pos.astype(int), cells - 2)
    w = pos - lo
    up = np.zeros((size, cells))
    up[np.arange(size), lo] = 1 - w
    up[np.arange(size), lo + 1] = w
    return np.einsum("yi,bij,xj->byx", up, rng.normal(size=(b, cells, cells)), up)


def _render(
    p: dict[str, np.ndarray], y: np.ndarray, classes: list[str], size: int, rng: np.random.Generator
) -> np.ndarray:
    """(b, size, size) uint8 images for a chunk of parameters ``p`` and labels ``y`` (b, C)."""
    b = len(y)
    has = {
        c: y[:, classes.index(c)][:, None, None] if c in classes else np.zeros((b, 1, 1))
        for c in FINDINGS
    }
    q = {k: v[:, None, None] for k, v in p.items()}
    g = np.linspace(-1, 1, size)
    gx, gy = np.meshgrid(g, g)
    # Pose: sample body coordinates (x, y) for every pixel.
    cos, sin = np.cos(q["rot"]), np.sin(q["rot"])
    u, v = (gx - q["dx"]) / q["scale"], (gy - q["dy"]) / q["scale"]
    x, yy = cos * u - sin * v, sin * u + cos * v

    def ellipse(cx, cy, rx, ry):  # radial coordinate: < 1 inside
        return np.sqrt(((x - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)

    def soft(rho, edge=0.08):  # ~1 inside an ellipse, ~0 outside, smooth edge
        return _sigmoid((1.0 - rho) / edge)

    body = soft(ellipse(0.0, 0.05, q["body_w"], q["body_h"]), 0.05)
    rho = [ellipse(sign * q["lung_x"], q["lung_y"], q["lung_rx"], q["lung_ry"]) for sign in (-1, 1)]
    lung = [soft(r) for r in rho]
    ctr = np.where(has["Cardiomegaly"] > 0, q["ctr_big"], q["ctr"])
    heart_rx = ctr * (q["lung_x"] + q["lung_rx"])
    heart = soft(ellipse(q["heart_x"], q["heart_y"], heart_rx, q["heart_ry"]), 0.1)
    lungs = (lung[0] + lung[1]) * (1.0 - 0.85 * heart)  # the heart covers the inner lower lungs
    spine = np.exp(-0.5 * (x / 0.06) ** 2) * body

    def side(key):  # lung mask, lung radial coordinate and side sign (-1/+1) chosen by p[key]
        s = q[key]
        return (1 - s) * lung[0] + s * lung[1], (1 - s) * rho[0] + s * rho[1], 2 * s - 1

    def in_lung(key_side, key_r, key_t):  # a point inside the chosen lung (polar, per image)
        sign = 2 * q[key_side] - 1
        return (
            sign * q["lung_x"] + q[key_r] * q["lung_rx"] * np.cos(q[key_t]),
            q["lung_y"] + q[key_r] * q["lung_ry"] * np.sin(q[key_t]),
        )

    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * q["rib_f"] * (yy + 0.25 * x**2) + q["rib_phase"])
    texture = 0.05 * ribs + 0.03 * _smooth_noise(rng, b, size)

    # Pneumothorax: an upper-lateral rim of one lung, darker and without texture, with a thin
    # bright pleural line at its inner edge.
    mask, r, sign = side("ptx_side")
    lateral = _sigmoid(sign * (x - sign * q["lung_x"]) / 0.04)
    upper = _sigmoid((q["lung_y"] - yy) / 0.08)
    where = has["Pneumothorax"] * mask * lateral * upper
    edge = r - (1.0 - q["ptx_w"])
    rim = where * _sigmoid(edge / 0.02)
    pleura = where * np.exp(-0.5 * (edge / 0.015) ** 2)
    img = 0.1 + 0.55 * body - 0.33 * lungs + 0.06 * heart + 0.12 * spine
    img = img + lungs * texture * (1.0 - rim) - q["ptx_a"] * rim + 0.06 * pleura

    # Effusion: a fluid layer at the base of one lung, meniscus rising laterally.
    mask, _, sign = side("eff_side")
    bottom = q["lung_y"] + q["lung_ry"]
    level = bottom - q["eff_h"] * q["lung_ry"] - 0.15 * sign * (x - sign * q["lung_x"])
    img = img + has["Effusion"] * q["eff_a"] * mask * _sigmoid((yy - level) / 0.03)

    # Nodule: a small bright blob; opacity: a wide, faint haze; both inside a lung.
    nx, ny = in_lung("nod_side", "nod_r", "nod_t")
    blob = np.exp(-0.5 * ((x - nx) ** 2 + (yy - ny) ** 2) / q["nod_s"] ** 2)
    img = img + has["Nodule"] * q["nod_a"] * blob * lungs
    ox, oy = in_lung("opa_side", "opa_r", "opa_t")
    haze = np.exp(-0.5 * ((x - ox) ** 2 + (yy - oy) ** 2) / q["opa_s"] ** 2)
    img = img + has["Opacity"] * q["opa_a"] * haze * lungs

    img = q["contrast"] * (img - 0.4) + 0.4 + q["bright"]
    img = np.clip(img + q["noise"] * rng.normal(size=img.shape), 0.0, 1.0) ** q["gamma"]
    return np.round(255.0 * img).astype(np.uint8)


def make_synthetic(
    out_dir: str | Path,
    *,
    n: int = 1200,
    size: int = 64,
    task: str = "multilabel",
    seed: int = 0,
    strength: float = 1.0,
) -> DatasetTable:
    """Write ``n`` synthetic chest-X-ray-like PNGs (``size`` x ``size``, grey) to
    ``out_dir/images`` and return their table; files written earlier with the same settings
    are reused. Deterministic by ``seed``.

    Multi-label: 5 findings (Nodule, Effusion, Cardiomegaly, Pneumothorax, Opacity) with
    prevalence 15-30 % that can co-occur. Multi-class: exactly one of Normal (40 %), Nodule,
    Effusion, Cardiomegaly, Pneumothorax. Groups: synthetic patients (2-3 images sharing an
    anatomy); split 70/10/20 by patient. ``strength`` multiplies the contrast of the nodule,
    effusion, pneumothorax and opacity findings (1 = subtle; the CPU demo uses a larger value so
    that a few minutes of training learn something).
    """
    check_choice("task", task, ("multilabel", "multiclass"))
    if strength <= 0:
        raise ConfigError(f"synthetic: option strength={strength} must be positive")
    if n < 10 or size < 16:
        raise ConfigError(f"synthetic: need n >= 10 and size >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    patient = _patients(rng, n)
    labels = _labels(rng, patient, task)
    params = _params(rng, patient)
    for key in ("nod_a", "eff_a", "ptx_a", "opa_a"):
        params[key] = params[key] * strength
    classes = list(FINDINGS if task == "multilabel" else MULTICLASS)

    images = Path(out_dir).expanduser().absolute() / "images"
    paths = [images / f"syn_{i:05d}.png" for i in range(n)]
    stamp = {
        "n": n,
        "size": size,
        "task": task,
        "seed": seed,
        "strength": strength,
        "version": VERSION,
    }
    stamp_file = images / "synthetic.json"
    fresh = (
        stamp_file.is_file()
        and json.loads(stamp_file.read_text()) == stamp
        and all(p.is_file() for p in paths)
    )
    if not fresh:
        images.mkdir(parents=True, exist_ok=True)
        stamp_file.unlink(missing_ok=True)
        for old in images.glob("syn_*.png"):
            old.unlink()
        noise = np.random.default_rng([seed, 1])
        for start in range(0, n, CHUNK):
            sl = slice(start, start + CHUNK)
            chunk = _render({k: v[sl] for k, v in params.items()}, labels[sl], classes, size, noise)
            for path, pixels in zip(paths[sl], chunk):
                Image.fromarray(pixels, mode="L").save(path)
        write_text_atomic(stamp_file, json.dumps(stamp))

    groups = np.asarray([f"patient{k:05d}" for k in patient])
    return DatasetTable(
        name="synthetic",
        paths=[str(p) for p in paths],
        labels=labels,
        classes=classes,
        task=task,
        groups=groups,
        split=grouped_split(groups, labels, seed=seed),
        split_source=grouped_split_name("patient", seed),
        channels=1,
    )
