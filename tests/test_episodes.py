"""Bad input: every case gets a clear error naming the item, and nothing of the batch is stored."""

import json
from pathlib import Path

import pytest

from rememory import InvalidEpisodeError
from rememory.episodes import default_id, load_episodes_file, validate_many

GOOD = {"keywords": "k", "text": "fine"}


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([GOOD, {"text": "no keywords"}], r"episode #1: missing 'keywords'"),
        ([GOOD, {"keywords": "no text"}], r"episode #1: missing 'text'"),
        ([{"keywords": 3, "text": "x"}], r"episode #0: 'keywords' must be a string, got int"),
        ([{"keywords": "k", "text": ["x"]}], r"episode #0: 'text' must be a string, got list"),
        ([GOOD, GOOD, {"keywords": "k", "text": ""}], r"episode #2: 'text' is empty"),
        ([{"keywords": "k", "text": "x" * 101}], r"episode #0: 'text' is 101 bytes, over the limit of 100"),
        ([{"keywords": "k", "text": "bad \ud800 surrogate"}], r"episode #0: 'text' is not valid UTF-8"),
        (["just a string"], r"episode #0: must be an object"),
        ([{"keywords": "k", "text": "x", "colour": "red"}], r"unknown field\(s\) \['colour'\]"),
        ([{"keywords": "k", "text": "x", "time": "yesterday"}], r"'time' 'yesterday' is not an ISO 8601"),
        ([{"keywords": "k", "text": "x", "id": ""}], r"'id' must be a non-empty string"),
        ([{"keywords": "k", "text": "x", "id": "a"}, {"keywords": "k", "text": "y", "id": "a"}], r"episode #1: id 'a'"),
    ],
)
def test_bad_items(items: list, match: str) -> None:
    with pytest.raises(InvalidEpisodeError, match=match):
        validate_many(items, namespace="default", max_text_bytes=100)


def test_multibyte_limit_counts_bytes_not_characters() -> None:
    with pytest.raises(InvalidEpisodeError, match="over the limit"):
        validate_many([{"keywords": "k", "text": "я" * 60}], namespace="default", max_text_bytes=100)


def test_identical_duplicates_collapse_and_ids_are_stable() -> None:
    eps = validate_many([GOOD, dict(GOOD)], namespace="ns", max_text_bytes=100)
    assert len(eps) == 1
    assert (
        eps[0].id
        == default_id("ns", "k", "fine", None)
        == validate_many([GOOD], namespace="ns", max_text_bytes=100)[0].id
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", r"is not valid JSON: .* line 1"),
        (b'{"keywords": "k", "text": "t"}', r"must hold a JSON list of episodes, but it holds a dict"),
        (b'[{"keywords": "k", "text": "\xff\xfe"}]', r"is not valid UTF-8 \(bad byte at offset 28\)"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, match: str) -> None:
    f = tmp_path / "eps.json"
    f.write_bytes(content)
    with pytest.raises(InvalidEpisodeError, match=match):
        load_episodes_file(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidEpisodeError, match="Cannot read"):
        load_episodes_file(tmp_path / "nope.json")


def test_good_file(tmp_path: Path) -> None:
    f = tmp_path / "eps.json"
    f.write_text(json.dumps([GOOD]), encoding="utf-8")
    assert load_episodes_file(f) == [GOOD]


@pytest.mark.model
def test_rejected_batch_stores_nothing(make_memory) -> None:
    mem = make_memory()
    mem.add_many([{"keywords": "a", "text": "already here", "id": "a"}])
    with pytest.raises(InvalidEpisodeError, match="episode #2"):
        mem.add_many([{"keywords": "b", "text": "fine", "id": "b"}, GOOD, {"keywords": "c", "text": ""}])
    assert len(mem) == 1
    assert mem.get("a").text == "already here"
