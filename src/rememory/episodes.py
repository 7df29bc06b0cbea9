"""Validation of incoming episodes, and reading them from a JSON file.

Everything is checked before anything is trained or stored, so a rejected batch leaves the
store untouched. Errors name the item's index and what to fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ConfigError, InvalidEpisodeError
from .limits import MAX_ID_CHARS, MAX_KEYWORDS_BYTES, MAX_QUERY_CHARS
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


# Control, format (bidirectional overrides U+202A-202E and U+2066-2069, marks U+200E/F, zero-width
# characters), line and paragraph separators, and lone surrogates: an identifier that contains them
# displays as something it is not, or breaks the line it is printed on.
_UNSAFE_ID_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _unsafe_char(value: str) -> int | None:
    """The index of the first character of ``value`` that an identifier must not hold, if any."""
    for i, c in enumerate(value):
        if unicodedata.category(c) in _UNSAFE_ID_CATEGORIES:
            return i
    return None


def validate_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str) or not namespace.strip() or len(namespace) > MAX_ID_CHARS:
        raise InvalidEpisodeError(
            f"namespace must be a non-empty string of at most {MAX_ID_CHARS} characters, got {namespace!r}."
        )
    bad = _unsafe_char(namespace)
    if bad is not None:
        raise InvalidEpisodeError(
            f"namespace {namespace!r} holds the control or formatting character U+{ord(namespace[bad]):04X} at "
            f"position {bad}; use printable characters only."
        )
    return namespace


def validate_query(query: Any) -> str:
    """A recall query, checked: a non-empty string of valid UTF-8, at most ``MAX_QUERY_CHARS`` characters.

    >>> validate_query("bridge at night")
    'bridge at night'
    """
    if not isinstance(query, str) or not query.strip():
        raise ConfigError("The recall query is empty; give a phrase to search for.")
    if len(query) > MAX_QUERY_CHARS:
        raise ConfigError(f"The recall query is {len(query)} characters, over the limit of {MAX_QUERY_CHARS}; "
                          "shorten it.")  # fmt: skip
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"The recall query is not valid UTF-8 (it holds a lone surrogate at character {exc.start}, as "
            "undecodable bytes become); send UTF-8 text, or check the terminal's encoding."
        ) from None
    return query


def normalize_time(time: str) -> tuple[str, str]:
    """``(stored, hashed)`` forms of an ISO 8601 time: stored with a UTC offset, naive taken as UTC.

    ``stored`` is ``datetime.isoformat()`` of the parsed time, so every accepted spelling of a time
    is kept in one form that any ISO 8601 reader parses. ``hashed`` feeds the content-derived id:
    the offset-free form for a naive time, which is what stores made before normalisation hashed
    for a time written canonically, so re-adding such an episode still finds it.

    >>> normalize_time("2023-05-08 13:56")
    ('2023-05-08T13:56:00+00:00', '2023-05-08T13:56:00')
    >>> normalize_time("2023-05-08T13:56:00+02:00")[0]
    '2023-05-08T13:56:00+02:00'
    """
    dt = datetime.fromisoformat(time)
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc).isoformat(), dt.isoformat()
    return dt.isoformat(), dt.isoformat()


def stored_time(time: str | None) -> str | None:
    """A time read from a store, in today's stored form (stores made before normalisation kept it verbatim).

    >>> stored_time("2023-05-08T13:56:00")
    '2023-05-08T13:56:00+00:00'
    """
    if time is None:
        return None
    try:
        return normalize_time(time)[0]
    except ValueError:
        return time  # not a time this version would store; compared as written


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
    if len(_utf8(keywords, index, "keywords")) > MAX_KEYWORDS_BYTES:
        raise InvalidEpisodeError(
            f"'keywords' are {len(keywords.encode('utf-8'))} bytes, over the limit of {MAX_KEYWORDS_BYTES}. "
            "Keywords are a short key (people, places, topics); put long content in 'text'.",
            index=index,
            field="keywords",
        )
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
    time, hashed_time = item.get("time"), None
    if time is not None:
        if not isinstance(time, str):
            raise InvalidEpisodeError(f"'time' must be an ISO 8601 string, got {type(time).__name__}.",
                                      index=index, field="time")  # fmt: skip
        try:
            time, hashed_time = normalize_time(time)
        except ValueError:
            raise InvalidEpisodeError(
                f"'time' {time!r} is not an ISO 8601 date-time such as '2023-05-08T13:56:00+00:00'.",
                index=index,
                field="time",
            ) from None
    id_ = item.get("id")
    if id_ is None:
        id_ = default_id(ns, keywords, text, hashed_time)
    elif not isinstance(id_, str) or not id_ or len(id_) > MAX_ID_CHARS:
        raise InvalidEpisodeError(
            f"'id' must be a non-empty string of at most {MAX_ID_CHARS} printable characters, got {id_!r}.",
            index=index,
            field="id",
        )
    elif (bad := _unsafe_char(id_)) is not None:
        raise InvalidEpisodeError(
            f"'id' {id_!r} holds the control or formatting character U+{ord(id_[bad]):04X} at position {bad} "
            "(bidirectional overrides and invisible marks make an id display as another); use printable "
            "characters only.",
            index=index,
            field="id",
        )
    return Episode(id=id_, keywords=keywords, text=text, time=time, namespace=ns)


def validate_many(items: Iterable[Any], *, namespace: str, max_text_bytes: int) -> list[Episode]:
    """Validate a whole batch; identical duplicates collapse, conflicting ones are an error."""
    namespace = validate_namespace(namespace)
    out: list[Episode] = []
    seen: dict[tuple[str, str], int] = {}  # ids are unique per namespace
    for i, item in enumerate(items):
        ep = validate_episode(item, index=i, namespace=namespace, max_text_bytes=max_text_bytes)
        if (ep.namespace, ep.id) in seen:
            if out[seen[(ep.namespace, ep.id)]] != ep:
                raise InvalidEpisodeError(
                    f"id {ep.id!r} is also used by episode #{seen[(ep.namespace, ep.id)]} with different content; "
                    "ids must be unique within a namespace.",
                    index=i,
                    field="id",
                )
            continue
        seen[(ep.namespace, ep.id)] = len(out)
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
    except RecursionError:
        raise InvalidEpisodeError(
            f"{p} nests JSON arrays or objects too deeply to read. Expected a flat list like {example}."
        ) from None
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
