"""``s2mts2 serve``: check the ``serve`` extra, load the model (and split), start uvicorn."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from s2mts2.engine.evaluate import default_eval_dir
from s2mts2.errors import ConfigError
from s2mts2.infer.predict import load_model
from s2mts2.infer.serve.analysis import Analyst
from s2mts2.infer.serve.uploads import UploadStore

if TYPE_CHECKING:
    from s2mts2.infer.serve.app import ServeState

log = logging.getLogger("s2mts2")

SERVE_PACKAGES = ("starlette", "uvicorn")
NAMED_LOOPBACK = ("127.0.0.1", "localhost")
LOOPBACK = (*NAMED_LOOPBACK, "::1")


def require_serve_packages() -> None:
    """Raise ConfigError naming the missing packages of the ``serve`` extra and how to install."""
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"s2mts2 serve needs {' and '.join(missing)}: pip install 's2mts2[serve]' "
            "(from a checkout: pip install -e '.[serve]')"
        )


def build_state(
    model_path: Path,
    *,
    data_dir: Path | None = None,
    split: str = "test",
    device: str = "auto",
    max_file_mb: float = 50.0,
    max_files: int = 64,
    cam_layer: str | None = None,
    progress: bool = True,
) -> ServeState:
    """Load the model (and predict the split of ``data_dir``) for :func:`~.app.create_app`."""
    from s2mts2.infer.serve.app import ServeState
    from s2mts2.infer.serve.browse import SplitView

    if max_file_mb <= 0:
        raise ConfigError(f"--max-file-mb must be positive, got {max_file_mb}")
    if max_files < 1:
        raise ConfigError(f"--max-files must be at least 1, got {max_files}")
    analyst = Analyst(load_model(model_path, device), cam_layer)
    state = ServeState(
        model_name=model_path.name,
        analyst=analyst,
        uploads=UploadStore(analyst, max_files),
        max_file_bytes=int(max_file_mb * 1e6),
    )
    if data_dir is not None:
        state.split = SplitView.compute(analyst, data_dir, split, progress)
        evaluated = None
        if model_path.suffix.lower() != ".onnx":
            evaluated = default_eval_dir(model_path, split) / "metrics.json"
        state.split_metrics = state.split.metrics(evaluated)
    return state


def run_serve(
    model_path: Path,
    *,
    data_dir: Path | None = None,
    split: str = "test",
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    max_file_mb: float = 50.0,
    max_files: int = 64,
    cam_layer: str | None = None,
    progress: bool = True,
) -> None:
    """Serve the page until Ctrl-C; a host other than the loopback is warned about."""
    require_serve_packages()
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must lie in 0..65535, got {port}")
    import uvicorn

    from s2mts2.infer.serve.app import create_app

    state = build_state(
        model_path,
        data_dir=data_dir,
        split=split,
        device=device,
        max_file_mb=max_file_mb,
        max_files=max_files,
        cam_layer=cam_layer,
        progress=progress,
    )
    if host not in LOOPBACK:
        log.warning(
            "--host %s: the page is reachable from other machines, without a password or "
            "encryption; anyone who reaches it can run the model and see its uploads",
            host,
        )
    # a page on the loopback answers only requests addressed to it (DNS rebinding)
    hosts = list(NAMED_LOOPBACK) if host in NAMED_LOOPBACK else None
    app = create_app(state, allowed_hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    print(f"s2mts2 serve: http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
