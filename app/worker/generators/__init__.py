"""Video generators: the contract in `base`, the kinds (`kenburns`, `cog`,
`command`), and the generators file that names them (`catalog`)."""

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
    "parse_params",
    "resolve_image",
]
