"""``rememory show | forget | verify | stats``: look after a store."""

from __future__ import annotations

import json

import click

from .common import open_memory


@click.command()
@click.argument("id")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.pass_context
def show(ctx: click.Context, id: str, as_json: bool) -> None:
    """Reconstruct and print the episode with this ID."""
    with open_memory(ctx) as mem:
        ep = mem.get(id)
    if as_json:
        d = {"id": ep.id, "namespace": ep.namespace, "keywords": ep.keywords, "text": ep.text, "time": ep.time}
        click.echo(json.dumps(d, ensure_ascii=False))
    else:
        click.echo(f"ID: {ep.id}\nNamespace: {ep.namespace}\nKeywords: {ep.keywords}")
        if ep.time:
            click.echo(f"Time: {ep.time}")
        click.echo(f"\n{ep.text}")


@click.command()
@click.argument("id")
@click.pass_context
def forget(ctx: click.Context, id: str) -> None:
    """Delete the episode with this ID and erase its weights."""
    with open_memory(ctx) as mem:
        mem.forget(id)
    click.echo(f"Forgot {id}.", err=True)


@click.command()
@click.pass_context
def verify(ctx: click.Context) -> None:
    """Decode every cell and check it against its digest (exit code 7 if any fails)."""
    with open_memory(ctx) as mem:
        report = mem.verify()
    for id_, reason in sorted(report.failed.items()):
        click.echo(f"FAILED {id_}: {reason}")
    click.echo(f"{report.checked - len(report.failed)}/{report.checked} cells exact.")
    if not report.ok:
        raise click.exceptions.Exit(7)


def _per(n: int, tb: int) -> str:
    return f"{n / tb:.2f} per text byte" if tb else "n/a"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Episodes, text bytes, cell bytes and store bytes, and the embedder."""
    with open_memory(ctx) as mem:
        st = mem.stats()
    if as_json:
        click.echo(json.dumps(st.to_dict(), ensure_ascii=False))
        return
    tb = st.text_bytes
    click.echo(f"episodes:    {st.episodes}")
    click.echo(f"text bytes:  {tb}")
    click.echo(f"cell bytes:  {st.cell_bytes} ({_per(st.cell_bytes, tb)}; weights and cell metadata)")
    click.echo(f"store bytes: {st.store_bytes} ({_per(st.store_bytes, tb)}; everything on disk)")
    click.echo(f"embedder:    {st.embedder} ({st.dim}-d)")
    for ns, n in st.namespaces.items():
        click.echo(f"namespace:   {ns} ({n} episodes)")
