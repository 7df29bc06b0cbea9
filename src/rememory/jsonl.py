"""Reading episodes from JSONL (one JSON object a line), the format ``rememory export --format jsonl`` writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import InvalidEpisodeError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
_EXAMPLE = '{"keywords": "...", "text": "..."}'


def is_jsonl(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds JSONL: by its suffix, else by content (an object first, and not one JSON document).

    A file that is one valid JSON document stays JSON, so its errors stay the JSON reader's.
    """
    p = Path(path)
    if p.suffix.lower() in JSONL_SUFFIXES:
        return True
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return False  # the JSON reader reports it
    if not text.lstrip().startswith("{"):
        return False
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return True
    return False


def load_jsonl_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The objects of a JSONL file, in order (validated later by ``Memory.add_many``); blank lines are skipped.

    A line that is not one JSON object is an :class:`InvalidEpisodeError` naming its line number.
    """
    p = Path(path)
    out: list[dict[str, Any]] = []
    try:
        # newline="\n": only LF ends a line (a JSON string never holds a raw one; U+2028 and CR stay text)
        with open(p, encoding="utf-8-sig", newline="\n") as fh:
            for no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except RecursionError:
                    raise InvalidEpisodeError(
                        f"{p} line {no} nests JSON arrays or objects too deeply to read. Each line of a JSONL "
                        f"file holds one flat episode, like {_EXAMPLE}."
                    ) from None
                except json.JSONDecodeError as exc:
                    raise InvalidEpisodeError(
                        f"{p} line {no} is not valid JSON: {exc.msg} at column {exc.colno}. Each line of a JSONL "
                        f"file holds one episode, like {_EXAMPLE}."
                    ) from None
                if not isinstance(obj, dict):
                    raise InvalidEpisodeError(
                        f"{p} line {no} holds a JSON {type(obj).__name__}, not an object. Each line of a JSONL "
                        f"file holds one episode, like {_EXAMPLE}."
                    )
                out.append(obj)
    except UnicodeDecodeError as exc:
        raise InvalidEpisodeError(
            f"{p} is not valid UTF-8 (bad byte at offset {exc.start}); save it as UTF-8 and retry."
        ) from None
    except OSError as exc:
        raise InvalidEpisodeError(f"Cannot read {p}: {exc.strerror or exc}. Check the path.") from None
    return out
