"""``rememory export | import``: move a store, or one namespace, through a portable archive file."""

from __future__ import annotations

import click

from ..archive import read_manifest
from ..config import read_secret_file, resolve_secret
from ..memory import Memory
from .common import open_memory, store_secret
from .progress import StageBars

_LABELS = {"export": "exporting", "verify": "checking", "import": "importing"}


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--namespace", "-n", default=None, help="Export one namespace only (default: the whole store).")
@click.option(
    "--format", "fmt", type=click.Choice(["archive", "jsonl"]), default="archive", show_default=True,
    help="archive: the memories as stored, no text (for `rememory import`); jsonl: decoded episodes, one a line.",
)  # fmt: skip
@click.pass_context
def export(ctx: click.Context, file: str, namespace: str | None, fmt: str) -> None:
    """Write the store (or one namespace) to FILE. Never writes to the store."""
    bars = StageBars(labels=_LABELS, unit="ep")
    with open_memory(ctx, read_only=True) as mem:
        try:
            rep = mem.export(file, namespace=namespace, format=fmt, progress=bars.on)
        finally:
            bars.close()
    what = "episodes" if fmt == "jsonl" else "memories"
    click.echo(f"Exported {rep.episodes} {what} to {rep.path} ({fmt}).", err=True)


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--archive-secret-file", type=click.Path(dir_okay=False, exists=True),
    help="File holding the secret a sealed archive was exported with (default: the store's own secret).",
)  # fmt: skip
@click.pass_context
def import_command(ctx: click.Context, file: str, archive_secret_file: str | None) -> None:
    """Load an archive written by `rememory export` into the store; already stored episodes are skipped."""
    secret = read_secret_file(archive_secret_file) if archive_secret_file else resolve_secret(ctx.obj.get("secret"))
    manifest = read_manifest(file, secret)
    mem = open_memory(ctx)
    if ctx.obj["embedder"] is None and manifest.embedder and len(mem) == 0 and mem.embedder.id != manifest.embedder:
        mem.close()  # an empty store takes the archive's embedder
        mem = Memory(ctx.obj["store"], embedder=manifest.embedder, **store_secret(ctx))
    bars = StageBars(labels=_LABELS, unit="ep")
    try:
        rep = mem.import_archive(file, progress=bars.on, secret=secret)
    finally:
        bars.close()
        mem.close()
    click.echo(f"Imported {rep.imported} memories into {mem.location} ({rep.skipped} already there).", err=True)
