"""The uint8 image cache: pixels equal direct decoding, failures skipped, reuse and rebuild."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2mts2.data import cache as cache_module
from s2mts2.data.cache import MANIFEST_NAME, ImageCache, build_cache
from s2mts2.data.imageio import load_preprocessed
from s2mts2.errors import ConfigError, DataError

SIZE = 32


def _images(folder: Path, n: int = 20) -> list[str]:
    """``n`` small images of mixed formats, modes and aspect ratios."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        h, w = 24 + 3 * i, 40 - i
        kind = i % 4
        if kind == 0:
            img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
            name = f"{i:02d}.png"
        elif kind == 1:
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            name = f"{i:02d}.jpg"
        elif kind == 2:
            img = Image.fromarray(rng.integers(0, 60000, (h, w)).astype(np.uint16))
            name = f"{i:02d}.png"
        else:
            img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
            name = f"{i:02d}.png"
        img.save(folder / name)
        paths.append(str(folder / name))
    return paths


def _broken(folder: Path, source: str) -> list[str]:
    """A truncated copy of ``source``, a text file named .png and a missing file."""
    data = Path(source).read_bytes()
    cut = folder / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    text = folder / "text.png"
    text.write_text("hello")
    return [str(cut), str(text), str(folder / "missing.png")]


def _assert_matches_direct(cache: ImageCache, paths: list[str]) -> None:
    assert cache.paths == paths
    assert cache.images.shape == (len(paths), cache.channels, SIZE, SIZE)
    assert cache.images.dtype == np.uint8
    for row, path in enumerate(paths):
        direct = load_preprocessed(path, SIZE, cache.channels).transpose(2, 0, 1)
        np.testing.assert_array_equal(cache.images[row], direct)


def test_parallel_build_equals_direct_decoding_and_skips_failures(tmp_path, caplog):
    good = _images(tmp_path / "img")
    broken = _broken(tmp_path / "img", good[0])
    inputs = good[:5] + broken[:2] + good[5:] + broken[2:] + good[:1]  # one duplicate
    with caplog.at_level(logging.WARNING, logger="s2mts2"):
        cache, failures = build_cache(
            inputs, tmp_path / "cache", size=SIZE, channels=3, workers=2, progress=False
        )
    assert set(failures) == set(broken)
    assert "truncated" in failures[broken[0]] and "No such file" in failures[broken[2]]
    _assert_matches_direct(cache, good)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("left out" in m for m in warnings) == 3
    assert any("3 of 23 images could not be decoded" in m for m in warnings)
    manifest = json.loads((tmp_path / "cache" / MANIFEST_NAME).read_text())
    assert manifest["failures"] == failures and manifest["n_images"] == 20
    assert manifest["size"] == SIZE and manifest["channels"] == 3 and manifest["images_per_s"] > 0
    npy = tmp_path / "cache" / "images.npy"
    assert npy.stat().st_size == cache.images.offset + cache.images.nbytes  # no unused rows
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["images.npy", MANIFEST_NAME]


def test_rows_batch_and_tensor(tmp_path):
    paths = _images(tmp_path / "img", 6)
    cache, _ = build_cache(paths, tmp_path / "c", size=SIZE, channels=1, workers=1, progress=False)
    reopened = ImageCache.open(tmp_path / "c")
    rows = reopened.rows_for([paths[4], Path(paths[1]), paths[4]])
    assert rows.dtype == np.int64 and rows.tolist() == [4, 1, 4]
    batch = reopened.batch(rows)
    assert batch.shape == (3, 1, SIZE, SIZE) and batch.flags.writeable
    for out, path in zip(batch, [paths[4], paths[1], paths[4]]):
        np.testing.assert_array_equal(out, load_preprocessed(path, SIZE, 1).transpose(2, 0, 1))
    with pytest.raises(DataError, match="elsewhere.png.*not in the image cache"):
        reopened.rows_for([paths[0], "elsewhere.png"])
    tensor = reopened.to_tensor()
    assert str(tensor.dtype) == "torch.uint8" and tuple(tensor.shape) == cache.images.shape
    np.testing.assert_array_equal(tensor.numpy(), cache.images)


def test_rows_for_names_the_decode_failure(tmp_path):
    paths = _images(tmp_path / "img", 2)
    text = tmp_path / "img" / "text.png"
    text.write_text("hello")
    cache, _ = build_cache(
        [*paths, str(text)], tmp_path / "c", size=SIZE, channels=1, workers=1, progress=False
    )
    with pytest.raises(DataError, match="text.png.*cannot identify"):
        cache.rows_for([str(text)])


def test_reuse_without_decoding_and_rebuild_on_change(tmp_path, monkeypatch, caplog):
    paths = _images(tmp_path / "img", 4)
    cache_dir = tmp_path / "c"
    first, _ = build_cache(paths, cache_dir, size=SIZE, channels=1, workers=1, progress=False)
    manifest = dict(first.manifest)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache was valid")

    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="s2mts2"):
        patch.setattr(cache_module, "load_preprocessed", no_decoding)
        again, failures = build_cache(
            paths, cache_dir, size=SIZE, channels=1, workers=1, progress=False
        )
    assert again.manifest == manifest and failures == {}
    assert any("reusing" in r.getMessage() for r in caplog.records)

    # Replace one input (new content, new mtime): rebuilt, and the new pixels are in the store.
    Image.fromarray(np.full((10, 10), 7, dtype=np.uint8)).save(paths[2])
    _touch(paths[2])
    rebuilt, _ = build_cache(paths, cache_dir, size=SIZE, channels=1, workers=1, progress=False)
    assert rebuilt.manifest["input_hash"] != manifest["input_hash"]
    assert (rebuilt.images[2] == 7).all()

    # Other settings or another list of paths: rebuilt too.
    resized, _ = build_cache(paths, cache_dir, size=16, channels=1, workers=1, progress=False)
    assert resized.images.shape == (4, 1, 16, 16)
    fewer, _ = build_cache(paths[:3], cache_dir, size=16, channels=1, workers=1, progress=False)
    assert fewer.paths == paths[:3]


def _touch(path: str) -> None:
    """A new mtime, same bytes."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def _rewrite_keeping_mtime(path: str) -> None:
    """New content under the old mtime, as ``cp -p`` or ``rsync -t`` leave it (size differs)."""
    stat = os.stat(path)
    Image.fromarray(np.full((10, 10), 7, dtype=np.uint8)).save(path)
    assert os.stat(path).st_size != stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("change", ["touch", "rewrite_keeping_mtime", "channels"])
def test_each_part_of_the_input_signature_rebuilds(tmp_path, change):
    paths = _images(tmp_path / "img", 3)
    first, _ = build_cache(paths, tmp_path / "c", size=SIZE, channels=1, workers=1, progress=False)
    channels = 3 if change == "channels" else 1
    if change == "touch":
        _touch(paths[1])
    elif change == "rewrite_keeping_mtime":
        _rewrite_keeping_mtime(paths[1])
    again, _ = build_cache(
        paths, tmp_path / "c", size=SIZE, channels=channels, workers=1, progress=False
    )
    assert again.manifest["input_hash"] != first.manifest["input_hash"]
    assert again.images.shape == (3, channels, SIZE, SIZE)
    _assert_matches_direct(again, paths)


def test_a_crash_between_the_new_store_and_its_manifest_leaves_no_valid_cache(
    tmp_path, monkeypatch
):
    paths = _images(tmp_path / "img", 4)
    cache_dir = tmp_path / "c"
    build_cache(paths[:2], cache_dir, size=SIZE, channels=1, workers=1, progress=False)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "write_text_atomic", crash)
        with pytest.raises(KeyboardInterrupt):  # same row count, other images
            build_cache(paths[2:], cache_dir, size=SIZE, channels=1, workers=1, progress=False)
    with pytest.raises(DataError, match="no valid image cache"):
        ImageCache.open(cache_dir)  # the old manifest must not describe the new store
    again, _ = build_cache(paths[2:], cache_dir, size=SIZE, channels=1, workers=1, progress=False)
    _assert_matches_direct(again, paths[2:])


def test_interrupted_build_leaves_the_old_cache_or_none(tmp_path, monkeypatch):
    paths = _images(tmp_path / "img", 4)
    cache_dir = tmp_path / "c"
    old, _ = build_cache(paths[:2], cache_dir, size=SIZE, channels=1, workers=1, progress=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "load_preprocessed", interrupted)
        with pytest.raises(KeyboardInterrupt):
            build_cache(paths, cache_dir, size=SIZE, channels=1, workers=1, progress=False)
    assert sorted(p.name for p in cache_dir.iterdir()) == ["images.npy", MANIFEST_NAME]
    assert ImageCache.open(cache_dir).manifest == old.manifest
    new, _ = build_cache(paths, cache_dir, size=SIZE, channels=1, workers=1, progress=False)
    _assert_matches_direct(new, paths)


def test_damaged_or_missing_cache(tmp_path):
    with pytest.raises(DataError, match="no valid image cache"):
        ImageCache.open(tmp_path / "nothing")
    paths = _images(tmp_path / "img", 3)
    cache_dir = tmp_path / "c"
    build_cache(paths, cache_dir, size=SIZE, channels=1, workers=1, progress=False)
    manifest = json.loads((cache_dir / MANIFEST_NAME).read_text())
    manifest["n_images"] = 5
    (cache_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="damaged"):
        ImageCache.open(cache_dir)
    manifest["n_images"], manifest["format_version"] = 3, 0  # an older cache layout
    (cache_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="format version 0"):
        ImageCache.open(cache_dir)
    rebuilt, _ = build_cache(paths, cache_dir, size=SIZE, channels=1, workers=1, progress=False)
    assert len(rebuilt) == 3


def test_bad_arguments(tmp_path):
    text = tmp_path / "a.png"
    text.write_text("x")
    with pytest.raises(DataError, match="none of the 1 images"):
        build_cache([str(text)], tmp_path / "c", size=SIZE, channels=1, workers=1, progress=False)
    assert not (tmp_path / "c" / MANIFEST_NAME).exists()
    with pytest.raises(DataError, match="no images"):
        build_cache([], tmp_path / "c", size=SIZE, channels=1)
    with pytest.raises(ConfigError, match="channels"):
        build_cache([str(text)], tmp_path / "c", size=SIZE, channels=4)


def test_real_images_equal_direct_decoding(shared_data, tmp_path):
    ham = sorted((shared_data / "ham10000" / "images").glob("*.jpg"))[:20]
    nih = sorted((shared_data / "nih14_sample" / "images").glob("*.png"))[:20]
    paths = [str(p) for p in ham + nih]
    assert len(paths) == 40
    for channels, workers in ((1, 2), (3, 1)):
        cache, failures = build_cache(
            paths, tmp_path / f"c{channels}", size=SIZE, channels=channels, workers=workers
        )
        assert failures == {}
        _assert_matches_direct(cache, paths)


def test_decode_workers_stay_light():
    """A decode worker imports this module to unpickle its task, and nothing imports torch on
    the way: with torch (via ``s2mts2.files``) each of 16 workers spent seconds starting and a
    16-process build on a GPU machine ran at 0.97x one process."""
    code = (
        "import sys, s2mts2.data.cache; print(sorted({'torch', 'torchvision'} & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


_INTERRUPTED_BUILD = """
import sys
from s2mts2.data.cache import build_cache
paths = sys.argv[2:]
try:
    build_cache(paths, sys.argv[1], size=256, channels=3, workers=2, progress=False)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""


def _grandchildren(pid: int) -> list[int]:
    """PIDs whose parent is a child of ``pid`` (the decode workers under the forkserver)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    children = {p for p, parent in parents.items() if parent == pid}
    return [p for p, parent in parents.items() if parent in children]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_ctrl_c_stops_a_parallel_build_at_once_and_quietly(tmp_path):
    """A terminal's Ctrl-C sends SIGINT to the whole process group, the decode workers too.
    The workers must ignore it (one killed by it while holding the pool's result pipe left the
    pool's shutdown waiting forever); the main process stops the build within seconds."""
    source = tmp_path / "big.png"
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)
    Image.fromarray(noise).save(source)
    paths = []
    for i in range(1500):  # links to one file: distinct inputs, decoded one by one
        os.link(source, tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_BUILD, str(tmp_path / "cache"), *paths],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, with its workers
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and len(_grandchildren(proc.pid)) < 2:
        time.sleep(0.05)
    time.sleep(1.0)  # the workers are decoding
    assert proc.poll() is None, "the build ended before it could be interrupted"
    for worker in _grandchildren(proc.pid):  # the signal reaches the workers first: no race
        os.kill(worker, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the interrupted build did not stop within 30 s")
    assert proc.returncode == 130 and "interrupted" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
