"""The videos folder: where each video file lives, and removing replaced ones.

Files are named per generation and attempt, so a new video never overwrites
the one being served, and a worker that lost its lease cannot clobber the
file of the worker that replaced it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from app.errors import NotFound

log = logging.getLogger(__name__)

#: Longest img_name kept readable in a file name (file names stop at 255 bytes).
_READABLE_MAX_BYTES = 200


class VideoFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def name_for(img_name: str, generation: int, attempt: int) -> str:
        base = img_name
        if len(img_name.encode()) > _READABLE_MAX_BYTES or img_name.startswith("."):
            base = "h" + hashlib.sha256(img_name.encode()).hexdigest()[:32]
        return f"{base}.g{generation}.a{attempt}.mp4"

    def path(self, filename: str) -> Path:
        """The file's path inside the folder; `NotFound` if it would escape it or is absent."""
        root = self.root.resolve()
        candidate = (root / filename).resolve()
        if candidate.parent != root or not candidate.is_file():
            raise NotFound(f"video file {filename!r} is not in the videos folder")
        return candidate

    def remove(self, filename: str | None) -> None:
        """Remove a file that no event points at any more; a missing one is fine."""
        if not filename:
            return
        try:
            self.path(filename).unlink()
        except (NotFound, FileNotFoundError):
            return
        log.info("removed video file", extra={"video_filename": filename})
