"""Helpers shared by the CLI commands."""

from __future__ import annotations

import click

from ..memory import Memory


def open_memory(ctx: click.Context, *, read_only: bool = False) -> Memory:
    """The store the command line names; ``read_only`` for commands that must never write (verify, show)."""
    return Memory(ctx.obj["store"], embedder=ctx.obj["embedder"], read_only=read_only)


namespace_option = click.option(
    "--namespace", "-n", default="default", show_default=True, help="Namespace (one agent's memory)."
)
