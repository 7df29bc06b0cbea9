"""The trace engine: one shared integer byte model per namespace, a range-coded trace per episode."""

from .config import TraceConfig
from .engine import TraceEngine

__all__ = ["TraceConfig", "TraceEngine"]
