"""How fast ``s2mts2 serve`` answers: start-up, page load and the first result in a browser.

    python benchmarks/serve_speed.py [--repeats 5] [--json benchmarks/results/serve-speed.json]

For each model (random weights, 14 grey multi-label classes: ResNet-18 at 32 px, the demo's
size, and DenseNet-121 at 224 px), a checkpoint is written, ``s2mts2 serve`` is started as its
own process on 127.0.0.1 (CPU) and a headless Chromium (selenium, the system's chromium and
chromedriver) measures:

- ``startup_s``: process start until the page answers (imports, model load);
- ``page_load_ms``: navigation until the page has read the model's description (median);
- ``first_result_ms``: a 1024x1024 X-ray picked in the page until its probabilities and its
  Grad-CAM overlay are shown (median over fresh uploads);
- ``upload_ms`` / ``cam_ms``: the same through HTTP alone: the upload (decode, forward,
  Grad-CAM of the top class) and the overlay of another class (a new Grad-CAM), medians.

The X-ray is a real NIH image from ../shared/data/real_samples enlarged to 1024x1024 when
present, else a generated one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from s2mts2.bench import device_name
from s2mts2.config import RunConfig, config_to_dict
from s2mts2.data.augment import eval_transform
from s2mts2.engine.builders import classifier_network
from s2mts2.engine.checkpoint import save_checkpoint
from s2mts2.models.ema import EmaTeacher

ROOT = Path(__file__).resolve().parents[1]
XRAY = ROOT.parent / "shared" / "data" / "real_samples" / "00000001_000.png"
CLASSES = [f"finding{k}" for k in range(14)]
MODELS = (("resnet18", 32), ("densenet121", 224))
TIMEOUT = 300  # seconds for any one step


def write_checkpoint(path: Path, backbone: str, size: int) -> Path:
    """A stage-2 checkpoint with random weights (what ``finetune`` writes, minus training)."""
    cfg = RunConfig()
    cfg.model.backbone = backbone
    cfg.model.init = "random"
    cfg.data.size = size
    torch.manual_seed(0)
    net = classifier_network(cfg.model, 1, len(CLASSES)).eval()
    stats = eval_transform(1, size)
    meta = {
        "classes": CLASSES,
        "task": "multilabel",
        "channels": 1,
        "size": size,
        "mean": list(stats.mean),
        "std": list(stats.std),
        "backbone": backbone,
        "method": "random",
    }
    state = {
        "kind": "finetune",
        "epoch": 0,
        "student": net.state_dict(),
        "teacher": EmaTeacher(net).state_dict(),
        "config": config_to_dict(cfg),
        "meta": meta,
    }
    save_checkpoint(state, path)
    return path


def write_xray(path: Path) -> str:
    """A 1024x1024 grey PNG: the real NIH sample enlarged, or generated noise; says which."""
    if XRAY.is_file():
        with Image.open(XRAY) as img:
            img.convert("L").resize((1024, 1024), Image.Resampling.BICUBIC).save(path)
        return f"{XRAY.name} enlarged to 1024x1024"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1024, 1024), dtype=np.uint8)).save(path)
    return "generated 1024x1024 noise"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(ckpt: Path) -> Iterator[tuple[str, float]]:
    """``s2mts2 serve CKPT`` in its own process; yields (URL, seconds until it answered)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "s2mts2", "serve", str(ckpt), "--port", str(port)]
    start = time.perf_counter()
    process = subprocess.Popen([*command, "--device", "cpu", "--no-progress"])
    try:
        while True:
            try:
                urllib.request.urlopen(url + "api/info", timeout=5).read()
                break
            except OSError:
                if process.poll() is not None or time.perf_counter() - start > TIMEOUT:
                    raise RuntimeError(f"s2mts2 serve did not start: {command}") from None
                time.sleep(0.05)
        yield url, time.perf_counter() - start
    finally:
        process.terminate()
        process.wait(30)


def browser():
    """Headless Chromium through selenium (system chromium + chromedriver)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    service = webdriver.ChromeService(shutil.which("chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(TIMEOUT)
    return driver


def _wait(driver, condition) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, TIMEOUT, poll_frequency=0.005).until(condition)


def page_load_ms(driver, url: str) -> float:
    from selenium.webdriver.common.by import By

    start = time.perf_counter()
    driver.get(url)
    _wait(driver, lambda d: d.find_element(By.ID, "model").text)
    return 1000 * (time.perf_counter() - start)


def first_result_ms(driver, xray: Path) -> float:
    """Pick ``xray`` in a freshly loaded page; ms until its bars and overlay are shown."""
    from selenium.webdriver.common.by import By

    loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"

    def shown(d) -> bool:
        cams = d.find_elements(By.CSS_SELECTOR, "#cards img.cam")
        return bool(cams) and d.execute_script(loaded, cams[0])

    start = time.perf_counter()
    driver.find_element(By.ID, "files").send_keys(str(xray))
    _wait(driver, shown)
    return 1000 * (time.perf_counter() - start)


def api_ms(url: str, data: bytes) -> tuple[float, float]:
    """(upload ms, ms for the overlay of the least probable class) through HTTP alone."""
    request = urllib.request.Request(url + "api/uploads?name=xray.png", data=data, method="POST")
    start = time.perf_counter()
    card = json.loads(urllib.request.urlopen(request, timeout=TIMEOUT).read())
    upload = time.perf_counter() - start
    other = int(np.argmin(card["probabilities"]))
    start = time.perf_counter()
    urllib.request.urlopen(f"{url}api/uploads/{card['id']}/cam/{other}.png", timeout=TIMEOUT).read()
    return 1000 * upload, 1000 * (time.perf_counter() - start)


def measure(backbone: str, size: int, work: Path, xray: Path, repeats: int) -> dict[str, Any]:
    ckpt = write_checkpoint(work / f"{backbone}-{size}" / "best.pt", backbone, size)
    with server(ckpt) as (url, startup):
        driver = browser()
        try:
            page_load_ms(driver, url)  # warm-up: the browser's caches, the server's first request
            first_result_ms(driver, xray)
            loads, results = [], []
            for _ in range(repeats):
                loads.append(page_load_ms(driver, url))
                results.append(first_result_ms(driver, xray))
        finally:
            driver.quit()
        api = [api_ms(url, xray.read_bytes()) for _ in range(repeats)]
    median = statistics.median
    return {
        "model": f"{backbone} {size}px",
        "startup_s": round(startup, 2),
        "page_load_ms": round(median(loads), 1),
        "first_result_ms": round(median(results), 1),
        "upload_ms": round(median(u for u, _ in api), 1),
        "cam_ms": round(median(c for _, c in api), 1),
        "first_result_ms_all": [round(v, 1) for v in results],
    }


def chromium_version() -> str:
    binary = shutil.which("chromium") or shutil.which("google-chrome")
    if binary is None:
        return "none"
    return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/serve-speed.json")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="s2mts2-serve-bench-") as tmp:
        work = Path(tmp)
        xray = work / "xray-1024.png"
        image = write_xray(xray)
        rows = [measure(b, s, work, xray, args.repeats) for b, s in MODELS]
    result = {
        "command": shlex.join(["python", "benchmarks/serve_speed.py", *(argv or sys.argv[1:])]),
        "image": image,
        "repeats": args.repeats,
        "machine": {
            "cpu": device_name(torch.device("cpu")),
            "cores": os.cpu_count(),
            "arch": platform.machine(),
            "torch": torch.__version__,
            "browser": chromium_version(),
            "load_average_before": load_before,
        },
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("| model | start-up | page load | first result | upload (HTTP) | other class's CAM |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['startup_s']} s | {r['page_load_ms']} ms | "
            f"{r['first_result_ms']} ms | {r['upload_ms']} ms | {r['cam_ms']} ms |"
        )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
