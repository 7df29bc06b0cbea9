"""ReMemory as a service: one FastAPI app with REST (``/v1``) and MCP (``/mcp``), API keys, training jobs.

Needs the ``server`` and ``mcp`` extras: ``pip install 'rememory[server,mcp]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .auth import ApiKey, KeyStore

__all__ = ["ApiKey", "KeyStore", "create_app"]

# Resolved on first use: `rememory mcp` imports rememory.server.mcp, and must not pay for
# FastAPI and the REST app (which this package's import would otherwise load) before its first answer.
_LAZY = {"create_app": ".app", "ApiKey": ".auth", "KeyStore": ".auth"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
