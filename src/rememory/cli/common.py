"""Helpers shared by the CLI commands."""

from __future__ import annotations

import click

from ..memory import Memory


def open_memory(ctx: click.Context) -> Memory:
    return Memory(ctx.obj["store"], embedder=ctx.obj["embedder"])


namespace_option = click.option(
    "--namespace", "-n", default="default", show_default=True, help="Namespace (one agent's memory)."
)
