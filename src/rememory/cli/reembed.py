"""``rememory reembed``: rebuild a store's recall keys with another embedder, without retraining any cell."""

from __future__ import annotations

import click

from ..memory import Memory
from .common import store_secret


@click.command()
@click.option(
    "--embedder",
    "target",
    metavar="NAME",
    help="The embedder to rebuild the keys with (see `--embedder` of rememory; default: the one given to "
    "rememory, else the store's own, which rebuilds its keys in place).",
)
@click.option(
    "--namespace",
    "-n",
    help="Rebuild only this namespace's keys, with the store's own embedder (a store has one embedder).",
)
@click.pass_context
def reembed(ctx: click.Context, target: str | None, namespace: str | None) -> None:
    """Rebuild every episode's keys (own and context) with another embedder and switch the store to it.

    Texts are decoded from the cells, which stay untouched. The new keys become the store's at once
    when all are made: an interrupted reembed leaves the store on its old embedder, and rerunning the
    same command resumes it.
    """
    from .progress import StageBars

    target = target or ctx.obj["embedder"]
    bars = StageBars(unit="ep")
    # Opened with the store's own embedder: the one given on the command line is the target here.
    with Memory(ctx.obj["store"], **store_secret(ctx)) as mem:
        try:
            report = mem.reembed(target, namespace=namespace, progress=lambda d, t: bars.update("reembedding", d, t))
        finally:
            bars.close()
        where = f"namespace {namespace!r} of " if namespace is not None else ""
        was = f" (was {report.previous})" if report.previous and report.previous != report.embedder else ""
        click.echo(f"Rebuilt the keys of {report.episodes} episodes in {where}{mem.location} with "
                   f"{report.embedder}{was}.")  # fmt: skip
