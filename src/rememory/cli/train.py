"""``rememory train``: train memory cells from a JSON file of episodes."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any

import click
from tqdm import tqdm

from ..episodes import load_episodes_file
from ..jsonl import is_jsonl, load_jsonl_file
from ..records import EncodeProgress
from .common import namespace_option, open_memory


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@namespace_option
@click.option("--replace", is_flag=True, help="Overwrite episodes whose id exists with other content.")
@click.option("--engine", metavar="NAME",
              help="The memory engine to encode with (see `rememory engines`); it becomes the store's engine for "
                   "new episodes. Default: the store's, else mlp-cell/1.")  # fmt: skip
@click.pass_context
def train(ctx: click.Context, file: str, namespace: str, replace: bool, engine: str | None) -> None:
    """Train FILE (a JSON list of {"keywords", "text", "id"?, "time"?}, or JSONL: one such object a line)."""
    items = load_jsonl_file(file) if is_jsonl(file) else load_episodes_file(file)
    mem = open_memory(ctx, engine=engine)
    bar: tqdm | None = None

    def on_progress(ev: EncodeProgress) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=ev.bytes_total, unit="B", unit_scale=True, unit_divisor=1024, desc="training",
                       file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        bar.update(ev.bytes_done - bar.n)
        bar.set_postfix_str(f"{ev.done}/{ev.total} episodes")

    try:
        ids = mem.add_many(items, namespace=namespace, progress=on_progress, replace=replace)
    finally:
        if bar is not None:
            bar.close()
        mem.close()
    click.echo(f"Stored {len(ids)} episodes in {mem.location} ({_namespaces(items, namespace)}).", err=True)


def _namespaces(items: list[Any], default: str) -> str:
    """Where the episodes went: an episode's own ``namespace`` field wins over ``--namespace``.

    Read from the items that ``add_many`` accepted, so every one is a mapping with a valid field
    (identical duplicates, which it collapses, are counted each time they appear).
    """
    counts = Counter(
        item.get("namespace") or default if isinstance(item, Mapping) else default for item in items
    )
    if len(counts) == 1:
        return f"namespace {next(iter(counts))!r}"
    return "namespaces " + ", ".join(f"{ns!r}: {n}" for ns, n in sorted(counts.items()))
