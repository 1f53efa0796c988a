"""Hyperion: XDP network enforcement and telemetry dataplane."""

from __future__ import annotations

from hyperion.errors import HyperionError

__version__ = "0.1.0"
__all__ = ["HyperionError", "__version__"]
