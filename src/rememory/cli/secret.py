"""``rememory init`` and ``rememory secret rotate``: create an encrypted store, change its secret."""

from __future__ import annotations

import click

from ..config import read_secret_file
from .common import open_memory


@click.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the store (encrypted when a secret is given: --secret-file, REMEMORY_SECRET_FILE or REMEMORY_SECRET)."""
    with open_memory(ctx) as mem:
        kind = "an encrypted" if mem.encrypted else "a plaintext"
        where = mem.location
    click.echo(f"{where} is {kind} store.", err=True)


@click.group()
def secret() -> None:
    """Manage the secret of an encrypted store."""


@secret.command()
@click.option(
    "--new-secret-file", required=True, type=click.Path(dir_okay=False, exists=True),
    help="File holding the new secret (the current one comes from --secret-file or REMEMORY_SECRET).",
)  # fmt: skip
@click.pass_context
def rotate(ctx: click.Context, new_secret_file: str) -> None:
    """Re-wrap the store's data keys under a new secret; no data is re-encrypted. The old secret stops working."""
    new = read_secret_file(new_secret_file)
    with open_memory(ctx.find_root()) as mem:
        n = mem.rotate_secret(new)
    click.echo(f"Re-wrapped {n} namespace keys of {mem.location}; only the new secret opens it now.", err=True)
