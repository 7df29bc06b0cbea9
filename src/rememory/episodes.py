"""Validation of incoming episodes, and reading them from a JSON file.

Everything is checked before anything is trained or stored, so a rejected batch leaves the
store untouched. Errors name the item's index and what to fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import InvalidEpisodeError
from .limits import MAX_ID_CHARS
from .records import Episode

_ALLOWED = {"id", "keywords", "text", "time", "namespace"}


def default_id(namespace: str, keywords: str, text: str, time: str | None) -> str:
    """A content-derived id: re-adding the same episode (a resumed train) reuses it."""
    h = hashlib.blake2b(digest_size=10)
    for part in (namespace, keywords, text, time or ""):
        h.update(part.encode("utf-8", "surrogatepass") + b"\x00")
    return "ep-" + h.hexdigest()


def _utf8(value: str, index: int | None, field: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEpisodeError(
            f"'{field}' is not valid UTF-8 (it contains a lone surrogate at character {exc.start}); "
            "fix the text's encoding.",
            index=index,
            field=field,
        ) from None


def validate_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str) or not namespace.strip() or len(namespace) > MAX_ID_CHARS:
        raise InvalidEpisodeError(
            f"namespace must be a non-empty string of at most {MAX_ID_CHARS} characters, got {namespace!r}."
        )
    return namespace


def validate_episode(item: Any, *, index: int | None, namespace: str, max_text_bytes: int) -> Episode:
    """Turn one raw item (a mapping or an :class:`Episode`) into a checked :class:`Episode`."""
    if isinstance(item, Episode):
        item = {"id": item.id, "keywords": item.keywords, "text": item.text, "time": item.time,
                "namespace": item.namespace}  # fmt: skip
    if not isinstance(item, Mapping):
        raise InvalidEpisodeError(
            f"must be an object with 'keywords' and 'text', got {type(item).__name__}.", index=index
        )
    unknown = sorted(set(item) - _ALLOWED)
    if unknown:
        raise InvalidEpisodeError(
            f"unknown field(s) {unknown}; allowed fields are {sorted(_ALLOWED)}.", index=index, field=unknown[0]
        )
    for field in ("keywords", "text"):
        if field not in item:
            raise InvalidEpisodeError(f"missing '{field}'; every episode needs 'keywords' and 'text'.",
                                      index=index, field=field)  # fmt: skip
        if not isinstance(item[field], str):
            raise InvalidEpisodeError(
                f"'{field}' must be a string, got {type(item[field]).__name__}.", index=index, field=field
            )
    keywords, text = item["keywords"], item["text"]
    _utf8(keywords, index, "keywords")
    data = _utf8(text, index, "text")
    if not data:
        raise InvalidEpisodeError("'text' is empty; an episode must have something to remember.",
                                  index=index, field="text")  # fmt: skip
    if len(data) > max_text_bytes:
        raise InvalidEpisodeError(
            f"'text' is {len(data)} bytes, over the limit of {max_text_bytes}. Split it into several "
            "episodes, or raise the limit (max_text_bytes=..., REMEMORY_MAX_TEXT_BYTES).",
            index=index,
            field="text",
        )
    ns = item.get("namespace", namespace)
    if ns is None:
        ns = namespace
    try:
        ns = validate_namespace(ns)
    except InvalidEpisodeError as exc:
        raise InvalidEpisodeError(str(exc), index=index, field="namespace") from None
    time = item.get("time")
    if time is not None:
        if not isinstance(time, str):
            raise InvalidEpisodeError(f"'time' must be an ISO 8601 string, got {type(time).__name__}.",
                                      index=index, field="time")  # fmt: skip
        try:
            datetime.fromisoformat(time)
        except ValueError:
            raise InvalidEpisodeError(
                f"'time' {time!r} is not an ISO 8601 date-time such as '2023-05-08T13:56:00'.",
                index=index,
                field="time",
            ) from None
    id_ = item.get("id")
    if id_ is None:
        id_ = default_id(ns, keywords, text, time)
    elif not isinstance(id_, str) or not id_ or len(id_) > MAX_ID_CHARS or any(ord(c) < 32 for c in id_):
        raise InvalidEpisodeError(
            f"'id' must be a non-empty string of at most {MAX_ID_CHARS} printable characters, got {id_!r}.",
            index=index,
            field="id",
        )
    return Episode(id=id_, keywords=keywords, text=text, time=time, namespace=ns)


def validate_many(items: Iterable[Any], *, namespace: str, max_text_bytes: int) -> list[Episode]:
    """Validate a whole batch; identical duplicates collapse, conflicting ones are an error."""
    namespace = validate_namespace(namespace)
    out: list[Episode] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        ep = validate_episode(item, index=i, namespace=namespace, max_text_bytes=max_text_bytes)
        if ep.id in seen:
            if out[seen[ep.id]] != ep:
                raise InvalidEpisodeError(
                    f"id {ep.id!r} is also used by episode #{seen[ep.id]} with different content; ids must be unique.",
                    index=i,
                    field="id",
                )
            continue
        seen[ep.id] = len(out)
        out.append(ep)
    return out


def load_episodes_file(
    path: str | os.PathLike[str], *, what: str = "episodes", example: str = '[{"keywords": "...", "text": "..."}]'
) -> list[Any]:
    """Read a JSON file holding a list (of episodes, by default; validated later by ``Memory.add_many``)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InvalidEpisodeError(f"Cannot read {p}: {exc.strerror or exc}. Check the path.") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidEpisodeError(
            f"{p} is not valid UTF-8 (bad byte at offset {exc.start}); save it as UTF-8 and retry."
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidEpisodeError(
            f"{p} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
            f"Expected a list like {example}."
        ) from None
    if not isinstance(data, list):
        raise InvalidEpisodeError(
            f"{p} must hold a JSON list of {what}, but it holds a {type(data).__name__}. Expected {example}."
        )
    return data
