"""Bad input: every case gets a clear error naming the item, and nothing of the batch is stored."""

import json
from pathlib import Path

import pytest

from rememory import InvalidEpisodeError
from rememory.episodes import default_id, load_episodes_file, validate_many, validate_query
from rememory.errors import ConfigError
from rememory.limits import MAX_KEYWORDS_BYTES, MAX_QUERY_CHARS

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
        ([{"keywords": "я" * (MAX_KEYWORDS_BYTES // 2 + 1), "text": "x"}], r"'keywords' are 4098 bytes, over"),
        ([{"keywords": "bad \udcff", "text": "x"}], r"'keywords' is not valid UTF-8"),
        ([{"keywords": "k", "text": "x", "id": "a\u202eb"}], r"'id' .* U\+202E at position 1"),
        ([{"keywords": "k", "text": "x", "id": "\u2066x"}], r"U\+2066 at position 0"),
        ([{"keywords": "k", "text": "x", "id": "x\u200f"}], r"U\+200F"),
        ([{"keywords": "k", "text": "x", "id": "a\u2028b"}], r"U\+2028"),
        ([{"keywords": "k", "text": "x", "id": "a\x7fb"}], r"U\+007F"),
        ([{"keywords": "k", "text": "x", "id": "a\ud800"}], r"U\+D800"),
        ([{"keywords": "k", "text": "x", "namespace": "ns\u202e"}], r"namespace .* U\+202E"),
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


def test_keywords_at_the_limit_are_accepted() -> None:
    [ep] = validate_many([{"keywords": "k" * MAX_KEYWORDS_BYTES, "text": "x"}], namespace="d", max_text_bytes=100)
    assert len(ep.keywords) == MAX_KEYWORDS_BYTES


def test_printable_unicode_ids_are_kept() -> None:
    [ep] = validate_many([{"keywords": "k", "text": "x", "id": "мост-ночь 🌉 (1)"}], namespace="d", max_text_bytes=9)
    assert ep.id == "мост-ночь 🌉 (1)"


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2023-05-08T13:56:00", "2023-05-08T13:56:00+00:00"),  # naive: taken as UTC
        ("2023-05-08 13:56", "2023-05-08T13:56:00+00:00"),
        ("20230508T135600", "2023-05-08T13:56:00+00:00"),  # a form only some Python versions parse
        ("2023-05-08", "2023-05-08T00:00:00+00:00"),
        ("2023-05-08T13:56:00Z", "2023-05-08T13:56:00+00:00"),
        ("2023-05-08T13:56:00.250+02:00", "2023-05-08T13:56:00.250000+02:00"),  # its own offset is kept
    ],
)
def test_times_are_stored_in_one_iso_form_with_an_offset(given: str, stored: str) -> None:
    [ep] = validate_many([{"keywords": "k", "text": "x", "time": given}], namespace="d", max_text_bytes=9)
    assert ep.time == stored
    again = validate_many([{"keywords": "k", "text": "x", "time": given}], namespace="d", max_text_bytes=9)
    assert again[0].id == ep.id  # the content-derived id stays idempotent


def test_default_id_of_a_canonical_naive_time_is_unchanged() -> None:
    """Stores made before times were normalised hashed the time as written; a resumed train finds them."""
    [ep] = validate_many([{"keywords": "k", "text": "x", "time": "2023-05-08T13:56:00"}], namespace="d",
                         max_text_bytes=9)  # fmt: skip
    assert ep.id == default_id("d", "k", "x", "2023-05-08T13:56:00")


def test_query_validation() -> None:
    assert validate_query("мост ночью") == "мост ночью"
    for bad, match in (("", "empty"), ("  ", "empty"), (3, "empty"), ("\udcff", "not valid UTF-8"),
                       ("x" * (MAX_QUERY_CHARS + 1), "over the limit")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            validate_query(bad)


def test_deeply_nested_file_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "eps.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InvalidEpisodeError, match="nests JSON arrays or objects too deeply"):
        load_episodes_file(f)


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


@pytest.mark.model
def test_api_refuses_long_keywords_and_lone_surrogate_queries(make_memory) -> None:
    mem = make_memory()
    with pytest.raises(InvalidEpisodeError, match="over the limit of 4096"):
        mem.add("k" * 800_000, "text")
    mem.add("k", "something to find", id="a")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        mem.recall("\ud800")
    assert [h.id for h in mem.recall("something")] == ["a"]


@pytest.mark.model
def test_readding_an_episode_stored_before_time_normalisation_is_a_no_op(make_sqlite_memory) -> None:
    """A row whose time was stored verbatim (older stores) equals the same episode added today."""
    import sqlite3

    mem = make_sqlite_memory()
    [id_] = mem.add_many([{"keywords": "k", "text": "t", "time": "2023-05-08T13:56:00"}])
    path = mem.path
    mem.close()
    with sqlite3.connect(path / "rememory.db") as db:  # what an older version wrote
        assert db.execute("UPDATE episodes SET time = ? WHERE id = ?", ("2023-05-08T13:56:00", id_)).rowcount == 1
    mem = make_sqlite_memory()
    assert mem.add_many([{"keywords": "k", "text": "t", "time": "2023-05-08T13:56:00"}]) == [id_]
    assert len(mem) == 1
