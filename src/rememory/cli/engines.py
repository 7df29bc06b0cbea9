"""``rememory engines | reencode``: the registered memory engines, and converting a store's episodes between them."""

from __future__ import annotations

import json

import click

from .common import open_memory


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
def engines(as_json: bool) -> None:
    """The registered memory engines: the names --engine takes, and a line on each."""
    from ..engine import engine_info

    rows = [{"name": e.name, "description": e.description, "shared_models": e.uses_models, "default": e.default}
            for e in engine_info()]  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for r in rows:
        click.echo(f"{r['name']}{' (default)' if r['default'] else ''}: {r['description']}")


@click.command()
@click.option("--engine", "target", metavar="NAME",
              help="The engine to convert to (see `rememory engines`; default: the store's own).")  # fmt: skip
@click.option("--namespace", "-n", help="Convert only this namespace's episodes (default: every namespace).")
@click.option("--batch", type=click.IntRange(min=1), help="Episodes committed per batch (default: 256).")
@click.option("--retrain/--no-retrain", default=None,
              help="For an engine with shared models: train a new model version first (default: only when the "
                   "namespace has none, or holds twice the episodes its newest model was trained on).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.pass_context
def reencode(
    ctx: click.Context, target: str | None, namespace: str | None, batch: int | None, retrain: bool | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Re-encode stored episodes with another engine (or a newer model version of theirs).

    Each episode is decoded and checked against its digest, encoded with the engine, checked to
    decode to the same bytes, and swapped in, a batch at a time: an interrupted reencode loses
    nothing, and rerunning the same command resumes it. Recall keys are untouched. Converting the
    whole store also makes the engine the store's for new episodes. Exit code 7 if any episode
    is damaged (it is listed and left as it was).
    """
    from ..records import EncodeProgress
    from .progress import StageBars

    bars = StageBars(labels={"train-model": "training the model", "reencode": "re-encoding"},
                     units={"train-model": {"unit": "ep"}}, unit="ep")  # fmt: skip

    def on_progress(ev: EncodeProgress) -> None:
        bars.update(ev.stage, ev.done, ev.total)

    with open_memory(ctx) as mem:
        try:
            report = mem.reencode(target, namespace=namespace, batch=batch, retrain=retrain, progress=on_progress)
        finally:
            bars.close()
        if as_json:
            click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
        for f in sorted(report.failures, key=lambda f: (f.namespace, f.id)):
            click.echo(f"FAILED {f.namespace}/{f.id}: {f.reason}", err=True)
        models = "".join(f"; new model version {v} in namespace {ns!r}" for ns, v in sorted(report.models.items()))
        click.echo(f"Re-encoded {report.reencoded} of {report.episodes} episodes in {mem.location} with "
                   f"{report.engine} ({report.unchanged} already were{models}).", err=True)  # fmt: skip
    if not report.ok:
        raise click.exceptions.Exit(7)
