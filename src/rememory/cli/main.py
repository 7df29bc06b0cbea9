"""Entry point of the ``rememory`` console script. Errors become exit codes here, and only here."""

from __future__ import annotations

import importlib
import os
import sys
import threading

import click

from ..errors import RememoryError

FAST_EXIT = threading.Event()  # set by read-only commands that may skip interpreter teardown

# Subcommands load on demand, so `rememory recall` never imports the server or chat stacks.
COMMANDS = {
    "train": "rememory.cli.train:train",
    "recall": "rememory.cli.recall:recall",
    "show": "rememory.cli.inspect:show",
    "forget": "rememory.cli.inspect:forget",
    "verify": "rememory.cli.inspect:verify",
    "reembed": "rememory.cli.reembed:reembed",
    "stats": "rememory.cli.inspect:stats",
    "embedders": "rememory.cli.inspect:embedders",
    "engines": "rememory.cli.engines:engines",
    "reencode": "rememory.cli.engines:reencode",
    "eval": "rememory.cli.eval:eval_command",
    "chat": "rememory.cli.chat:chat",
    "serve": "rememory.cli.serve:serve",
    "mcp": "rememory.cli.serve:mcp_command",
    "keys": "rememory.cli.keys:keys",
    "export": "rememory.cli.archive:export",
    "import": "rememory.cli.archive:import_command",
    "init": "rememory.cli.secret:init",
    "secret": "rememory.cli.secret:secret",
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except RememoryError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted. Batches already committed are kept; rerun the same command to resume.", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    envvar="REMEMORY_STORE",
    type=click.Path(file_okay=False),
    help="Store directory (default: $REMEMORY_STORE, else a per-user data directory).",
)
@click.option(
    "--embedder",
    envvar="REMEMORY_EMBEDDER",
    help="Embedder name (multilingual-e5-small, all-MiniLM-L6-v2) or sentence-transformers model name or path "
    "(default: the store's, else multilingual-e5-small).",
)
@click.option(
    "--secret-file",
    envvar="REMEMORY_SECRET_FILE",
    type=click.Path(dir_okay=False),
    help="File holding the secret of an encrypted store (or $REMEMORY_SECRET_FILE; or the secret itself in "
    "$REMEMORY_SECRET). Never pass a secret as an argument: `ps` shows arguments.",
)
@click.option(
    "--keyring",
    envvar="REMEMORY_KEYRING",
    type=click.Path(dir_okay=False),
    help="Keyring file of an encrypted store (default: keyring.json in the store directory; for PostgreSQL, "
    "its keyring table). See docs/encryption.md.",
)
@click.version_option(package_name="rememory")
@click.pass_context
def cli(
    ctx: click.Context, store: str | None, embedder: str | None, secret_file: str | None, keyring: str | None
) -> None:
    """ReMemory: exact reconstructive episodic memory for LLM agents."""
    from ..config import read_secret_file

    secret = read_secret_file(secret_file) if secret_file else None
    ctx.obj = {"store": store, "embedder": embedder, "secret": secret, "keyring": keyring}


def main(argv: list[str] | None = None) -> None:
    """Run the CLI (``argv`` defaults to ``sys.argv[1:]``)."""
    # The CLI owns stderr: keep model-loading bars of other libraries off it (users can override).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # One torch thread per op, set once before torch loads (the library never sets it): requests and
    # training batches then each get a core of their own instead of oversubscribing them all.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="rememory")
    except SystemExit as exc:
        if FAST_EXIT.is_set() and threading.active_count() == 1:
            # A read-only command is done and has closed its store. Tearing down torch,
            # transformers and scikit-learn module by module takes ~1 s more (measured); skip it.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1)
        raise
