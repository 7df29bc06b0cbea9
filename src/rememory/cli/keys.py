"""``rememory keys create | list | revoke``: the API keys of ``rememory serve``.

A key belongs to one namespace; the server stores only its hash, so ``create`` prints it once.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from ..config import resolve_store_path
from .serve import require_server_extras

if TYPE_CHECKING:
    from ..server.auth import KeyStore


def _key_store(ctx: click.Context) -> KeyStore:
    require_server_extras()
    from ..server.auth import KeyStore

    return KeyStore.for_store(resolve_store_path(ctx.obj["store"]))


@click.group()
def keys() -> None:
    """Manage the API keys of `rememory serve` (one namespace per key)."""


@keys.command()
@click.argument("name")
@click.option("--namespace", "-n", help="The namespace the key may use (default: NAME).")
@click.pass_context
def create(ctx: click.Context, name: str, namespace: str | None) -> None:
    """Create a key called NAME and print it on stdout. It is shown only this once."""
    with _key_store(ctx) as store:
        key = store.create(name, namespace)
    click.echo(key)
    click.echo(
        f"Created key {name!r} for namespace {namespace or name!r} in {store.location}. Keep it now: only its hash is "
        "stored. Send it as `Authorization: Bearer <key>`.",
        err=True,
    )


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.pass_context
def list_keys(ctx: click.Context, as_json: bool) -> None:
    """List the keys: name, namespace, how the key starts, and when it was made."""
    with _key_store(ctx) as store:
        found = store.list()
    if as_json:
        click.echo(json.dumps([{"name": k.name, "namespace": k.namespace, "key": k.hint, "created_at": k.created_at}
                               for k in found], ensure_ascii=False))  # fmt: skip
        return
    if not found:
        click.echo("No API keys yet. Create one with `rememory keys create NAME`.", err=True)
        return
    for k in found:
        click.echo(f"{k.name}\t{k.namespace}\t{k.hint}\t{k.created_at}")


@keys.command()
@click.argument("name")
@click.pass_context
def revoke(ctx: click.Context, name: str) -> None:
    """Delete the key called NAME: requests using it get 401 from now on, even on a running server."""
    with _key_store(ctx) as store:
        store.revoke(name)
    click.echo(f"Revoked key {name!r}.", err=True)
