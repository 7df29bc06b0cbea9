"""``rememory recall``: find episodes by meaning and print them reconstructed."""

from __future__ import annotations

import json
import sys

import click

from ..limits import MAX_TOP_K
from ..memory import Memory
from ..records import RecallHit
from ..timeparse import filter_range
from .common import namespace_option, open_memory
from .main import FAST_EXIT


def render_hits(query: str, hits: list[RecallHit]) -> str:
    if not hits:
        return "No memories in this namespace yet. Add some with `rememory train FILE.json`.\n"
    best = hits[0]
    lines = [f"ID: {best.id}", f"Relevance: {best.score:.3f}"]
    if best.time:
        lines.append(f"Time: {best.time}")
    lines += ["", "Reconstructed memory:", best.text, "", "Closest matches:"]
    lines += [f"  {h.id} — relevance={h.score:.3f}" for h in hits]
    return "\n".join(lines) + "\n"


def _answer(mem: Memory, phrase: str, top_k: int, namespace: str, as_json: bool, since: str | None,
            until: str | None) -> None:  # fmt: skip
    hits = mem.recall(phrase, top_k=top_k, namespace=namespace, since=since, until=until)
    if as_json:
        click.echo(json.dumps({"query": phrase, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
    else:
        click.echo(render_hits(phrase, hits), nl=False)


@click.command()
@click.argument("phrase", required=False)
@click.option("--top-k", "--top_k", "-k", "top_k", default=3, show_default=True, type=click.IntRange(1, MAX_TOP_K))
@namespace_option
@click.option("--since", metavar="DATE", help="Only episodes from this ISO 8601 date or time on, e.g. 2023-05-01.")
@click.option("--until", metavar="DATE", help="Only episodes up to this ISO 8601 date or time (a date: its whole day).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.pass_context
def recall(ctx: click.Context, phrase: str | None, top_k: int, namespace: str, since: str | None, until: str | None,
           as_json: bool) -> None:  # fmt: skip
    """Recall the episodes closest to PHRASE (with no PHRASE: ask for phrases interactively).

    An episode's time is its `time`, or else a date in its keywords; with --since or --until,
    episodes with no time are left out.
    """
    FAST_EXIT.set()
    filter_range(since, until)  # a bad date fails before the store opens or a phrase is asked for
    with open_memory(ctx) as mem:
        if phrase is not None:
            _answer(mem, phrase, top_k, namespace, as_json, since, until)
            return
        stdin = sys.stdin  # click.get_text_stream is deprecated (removed in Click 9)
        while True:
            click.echo("Enter a phrase: ", nl=False, err=as_json)
            line = stdin.readline()
            if not line or not line.strip():
                if not line:
                    click.echo("", err=as_json)
                return
            click.echo("", err=as_json) if not stdin.isatty() else None
            _answer(mem, line.strip(), top_k, namespace, as_json, since, until)
