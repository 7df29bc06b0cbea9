"""``rememory show | forget | verify | stats``: look after a store."""

from __future__ import annotations

import json

import click

from .common import namespace_option, open_memory


@click.command()
@click.argument("id")
@namespace_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.pass_context
def show(ctx: click.Context, id: str, namespace: str, as_json: bool) -> None:
    """Reconstruct and print the episode with this ID (ids are unique per namespace)."""
    with open_memory(ctx, read_only=True) as mem:
        ep = mem.get(id, namespace=namespace)
    if as_json:
        d = {"id": ep.id, "namespace": ep.namespace, "keywords": ep.keywords, "text": ep.text, "time": ep.time}
        click.echo(json.dumps(d, ensure_ascii=False))
    else:
        click.echo(f"ID: {ep.id}\nNamespace: {ep.namespace}\nKeywords: {ep.keywords}")
        if ep.time:
            click.echo(f"Time: {ep.time}")
        click.echo(f"\n{ep.text}")


@click.command()
@click.argument("id", required=False)
@namespace_option
@click.option(
    "--all", "everything", is_flag=True,
    help="Forget every episode of the namespace. In an encrypted store this is crypto-erasure: the namespace's data "
    "key is destroyed, so every copy of its data (backups, WAL, replicas) becomes unreadable.",
)  # fmt: skip
@click.pass_context
def forget(ctx: click.Context, id: str | None, namespace: str, everything: bool) -> None:
    """Delete the episode with this ID (or, with --all, the whole namespace) and erase it from every file."""
    if (id is None) == (not everything):
        raise click.UsageError("Give either an episode ID or --all (with --namespace NS), not both.")
    with open_memory(ctx) as mem:
        if everything:
            n = mem.erase_namespace(namespace)
            how = " and destroyed its data key" if mem.encrypted else ""
            click.echo(f"Forgot all {n} episodes of namespace {namespace!r}{how}.", err=True)
            return
        assert id is not None
        mem.forget(id, namespace=namespace)
    click.echo(f"Forgot {id}.", err=True)


@click.command()
@click.option("--namespace", "-n", default=None, help="Check one namespace only (default: the whole store).")
@click.pass_context
def verify(ctx: click.Context, namespace: str | None) -> None:
    """Decode every memory and check it and its metadata (exit code 7 if any fails). Never writes."""
    with open_memory(ctx, read_only=True) as mem:
        report = mem.verify(namespace=namespace)
    for f in sorted(report.failures, key=lambda f: (f.namespace, f.id)):
        click.echo(f"FAILED {f.namespace}/{f.id}: {f.reason}")
    bad = len({(f.namespace, f.id) for f in report.failures})
    click.echo(f"{report.checked - bad}/{report.checked} memories exact.")
    if not report.ok:
        raise click.exceptions.Exit(7)


def _per(n: int, tb: int) -> str:
    return f"{n / tb:.2f} per text byte" if tb else "n/a"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Episodes, text bytes, memory bytes and store bytes, the embedder and the engine."""
    with open_memory(ctx, read_only=True) as mem:
        st = mem.stats()
    if as_json:
        click.echo(json.dumps(st.to_dict(), ensure_ascii=False))
        return
    tb = st.text_bytes
    lines = [
        ("episodes", f"{st.episodes}"),
        ("text bytes", f"{tb}"),
        ("memory bytes", f"{st.memory_bytes} ({_per(st.memory_bytes, tb)}; artifacts and shared models)"),
        ("store bytes", f"{st.store_bytes} ({_per(st.store_bytes, tb)}; everything on disk)"),
        ("embedder", f"{st.embedder} ({st.dim}-d)"),
        ("engine", f"{st.engine} (for new episodes)"),
        *(("namespace", f"{ns} ({n} episodes)") for ns, n in st.namespaces.items()),
    ]
    for label, value in lines:
        click.echo(f"{label + ':':<12} {value}")  # the columns of earlier releases


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
def embedders(as_json: bool) -> None:
    """The shipped embedders: the names --embedder takes, the id a store records, a line on each."""
    from ..config import DEFAULT_EMBEDDER
    from ..embed import SPECS

    rows = [{"name": s.name, "id": s.id, "aliases": list(s.aliases), "default": s.name == DEFAULT_EMBEDDER,
             "description": s.description} for s in SPECS]  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for r in rows:
        click.echo(f"{r['name']}{' (default)' if r['default'] else ''}: {r['description']}")
    click.echo("Any other name or path: a sentence-transformers model (cached on this machine or a local directory).")
