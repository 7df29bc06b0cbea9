"""Helpers shared by the CLI commands."""

from __future__ import annotations

from typing import Any

import click

from ..memory import Memory


def open_memory(ctx: click.Context, *, read_only: bool = False, engine: str | None = None) -> Memory:
    """The store the command line names; ``read_only`` for commands that must never write (verify, show);
    ``engine`` to encode new episodes with another engine than the store's."""
    return Memory(ctx.obj["store"], embedder=ctx.obj["embedder"], read_only=read_only, engine=engine,
                  **store_secret(ctx))  # fmt: skip


def store_secret(ctx: click.Context) -> dict[str, Any]:
    """The secret and keyring options of the command line, as Memory keywords."""
    return {"secret": ctx.obj.get("secret"), "keyring": ctx.obj.get("keyring")}


namespace_option = click.option(
    "--namespace", "-n", default="default", show_default=True, help="Namespace (one agent's memory)."
)
