"""Images dropped on the page: decoded, analysed and kept in memory only (never on disk).

At most ``max_files`` uploads are kept; adding another forgets the oldest. Each is known by a
random token, so a request names an upload, never a path.
"""

from __future__ import annotations

import io
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from s2mts2.infer.predict import decode_image
from s2mts2.infer.serve.analysis import Analysis, Analyst
from s2mts2.infer.serve.render import display_pixels

MAX_NAME = 255  # characters of a file name kept for display


@dataclass
class Upload:
    """One readable upload: its display pixels, the model's input pixels and the analysis."""

    name: str
    display: np.ndarray  # uint8 (H, W, C), at most render.DISPLAY_SIDE on its longest side
    squashed: np.ndarray  # uint8 (size, size, C): what the model saw
    analysis: Analysis
    size: tuple[int, int]  # the original (width, height)


class UploadStore:
    """Analyses uploads and keeps the latest ``max_files`` of them, by token."""

    def __init__(self, analyst: Analyst, max_files: int) -> None:
        self.analyst = analyst
        self.max_files = max_files
        self._uploads: OrderedDict[str, Upload] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, name: str, data: bytes) -> dict[str, Any]:
        """Decode and analyse one file's bytes; the page's card for it (``error`` when unreadable)."""
        name = name[:MAX_NAME] or "image"
        source = io.BytesIO(data)
        source.name = name  # errors name the file; a .dcm name marks DICOM
        pixels = decode_image(source, self.analyst.info.channels)
        if isinstance(pixels, str):  # Pillow's messages show the buffer's repr, not its name
            return {"name": name, "error": pixels.replace(repr(source), name)}
        squashed = self.analyst.squash(pixels)
        upload = Upload(
            name=name,
            display=display_pixels(pixels),
            squashed=squashed,
            analysis=self.analyst.analyse(squashed),
            size=(pixels.shape[1], pixels.shape[0]),
        )
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._uploads[token] = upload
            while len(self._uploads) > self.max_files:
                self._uploads.popitem(last=False)
        return {
            "id": token,
            "name": name,
            "width": upload.size[0],
            "height": upload.size[1],
            "probabilities": upload.analysis.probabilities.tolist(),
            "cam_class": next(iter(upload.analysis.cams), None),
            "error": None,
        }

    def get(self, token: str) -> Upload | None:
        with self._lock:
            return self._uploads.get(token)

    def cam(self, upload: Upload, class_index: int) -> np.ndarray:
        """The (h, w) CAM of ``class_index`` for ``upload``; computed once, then kept."""
        cams = upload.analysis.cams
        if class_index not in cams:
            cams[class_index] = self.analyst.cam(upload.squashed, class_index)
        return cams[class_index]
