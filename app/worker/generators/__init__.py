"""Video generators: the contract in `base`, the local Ken Burns one, and a lookup by name."""

from app.worker.generators.base import (
    GeneratedVideo,
    GenerationCancelled,
    GenerationError,
    GenerationParams,
    GenerationRequest,
    VideoGenerator,
    parse_params,
    resolve_image,
)
from app.worker.generators.kenburns import KenBurnsGenerator

__all__ = [
    "GeneratedVideo",
    "GenerationCancelled",
    "GenerationError",
    "GenerationParams",
    "GenerationRequest",
    "KenBurnsGenerator",
    "VideoGenerator",
    "get_generator",
    "parse_params",
    "resolve_image",
]


def get_generator(name: str) -> VideoGenerator:
    """The generator registered as `name`; raises ValueError for an unknown name."""
    if name == "kenburns":
        return KenBurnsGenerator()
    raise ValueError(f"unknown generator {name!r}; known: kenburns")
