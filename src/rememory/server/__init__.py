"""ReMemory as a service: one FastAPI app with REST (``/v1``) and MCP (``/mcp``), API keys, training jobs.

Needs the ``server`` and ``mcp`` extras: ``pip install 'rememory[server,mcp]'``.
"""

from .app import create_app
from .auth import ApiKey, KeyStore

__all__ = ["ApiKey", "KeyStore", "create_app"]
