"""Scoring: speed measurements and the default job; TrueMatch, caption metrics and recognition follow.

Example:
    >>> from benchmarks import world_speed
    >>> world_speed(n=10, size=32, repeats=1)["images"]
    10
"""

import vlm  # noqa: F401  (installs the torchvision fix before any heavy import)
from benchmarks.speed import world_speed

__all__ = ["world_speed"]
