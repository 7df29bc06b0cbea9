"""Episode times and query time ranges (rememory.timeparse), in several languages."""

from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import pytest

from rememory.errors import ConfigError
from rememory.timeparse import TimeRange, episode_time, filter_range, may_name_time, query_range

NOW = datetime(2024, 3, 15, 12, 0)  # a Friday
MAY_2023 = (datetime(2023, 5, 1), datetime(2023, 6, 1))
LAST_WEEK = (datetime(2024, 3, 4), datetime(2024, 3, 11))  # the Monday-to-Monday week before NOW's


def bounds(r: TimeRange | None) -> tuple[datetime | None, datetime | None] | None:
    return None if r is None else (r.start, r.end)


@pytest.mark.parametrize(
    ("time", "keywords", "want"),
    [
        (None, "Caroline, 1:56 pm on 8 May, 2023", datetime(2023, 5, 8, 13, 56)),  # LoCoMo's keywords
        (None, "Melanie, 10:37 am on 27 June, 2023", datetime(2023, 6, 27, 10, 37)),
        (None, "Ира, дача, 8 мая 2023", datetime(2023, 5, 8)),
        (None, "Oma, Garten, 3. Juni 2022", datetime(2022, 6, 3)),
        (None, "Anna, room 12, 8 May, 2023, cake", datetime(2023, 5, 8)),  # a date among other numbers
        (None, "Ilya, bridge, night", None),  # no date in the keywords
        (None, "Ilya, room 101, 3 cats", None),  # numbers that are no date
        (None, "Ilya, 8 May", None),  # no year: not guessed
        (None, "Ilya, party on 8 May 2023 at the lake", datetime(2023, 5, 8)),  # a date inside other words
        (None, "May, march, Sat", None),  # month and day names are not dates by themselves
        ("2024-09-14T21:40:00+02:00", "8 May, 2023", datetime(2024, 9, 14, 19, 40)),  # the field wins, in UTC
        ("2024-09-14T21:40:00", "", datetime(2024, 9, 14, 21, 40)),  # naive: taken as UTC
    ],
)
def test_episode_time(time: str | None, keywords: str, want: datetime | None) -> None:
    assert episode_time(time, keywords) == want


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("What did I do in May 2023?", MAY_2023),
        ("Что я делал в мае 2023?", MAY_2023),
        ("Что я делал в мае 2023 года?", MAY_2023),
        ("Was passierte im Mai 2023?", MAY_2023),
        ("What happened last week?", LAST_WEEK),
        ("Что было на прошлой неделе?", LAST_WEEK),
        ("Was habe ich letzte Woche gemacht?", LAST_WEEK),
        ("Qu'est-ce que j'ai fait la semaine dernière ?", LAST_WEEK),
        ("What did Caroline paint yesterday?", (datetime(2024, 3, 14), datetime(2024, 3, 15))),
        ("Что мы ели вчера?", (datetime(2024, 3, 14), datetime(2024, 3, 15))),
        ("¿Qué hice el mes pasado?", (datetime(2024, 2, 1), datetime(2024, 3, 1))),
        ("What did we do 3 days ago?", (datetime(2024, 3, 12), datetime(2024, 3, 13))),
        ("What happened on 8 May 2023?", (datetime(2023, 5, 8), datetime(2023, 5, 9))),
        ("Что было 8 мая 2023 года?", (datetime(2023, 5, 8), datetime(2023, 5, 9))),
        ("What did I buy on 2023-05-08?", (datetime(2023, 5, 8), datetime(2023, 5, 9))),
        ("What did I do in 2022?", (datetime(2022, 1, 1), datetime(2023, 1, 1))),
        ("Where did we go before 3 June 2023?", (None, datetime(2023, 6, 3))),
        ("Что было после 8 мая 2023?", (datetime(2023, 5, 9), None)),
        ("Everything since May 2023", (datetime(2023, 5, 1), None)),
        # A day number with its month after a comma: not "25 2022", which took today's month.
        ("What did Joanna bake on October 25, 2022?", (datetime(2022, 10, 25), datetime(2022, 10, 26))),
        ("Which book did Tim finish on 8th December, 2023?", (datetime(2023, 12, 8), datetime(2023, 12, 9))),
        ("Il y a 2 ans", (datetime(2022, 1, 1), datetime(2023, 1, 1))),
        ("Where did Ann go on the 25th, 2022?", (datetime(2022, 1, 1), datetime(2023, 1, 1))),  # not today's month
    ],
)
def test_query_range(query: str, want: tuple[datetime | None, datetime | None]) -> None:
    assert bounds(query_range(query, NOW)) == want


def test_the_phrase_is_the_querys_own_text() -> None:
    """The phrase a range was read from, as the query writes it: a caller can quote it or take it out."""
    cases = [("What did Joanna bake on October 25, 2022?", "October 25, 2022"),
             ("Что я делал в мае 2023 года?", "мае 2023 года"), ("(3 days ago)", "3 days ago")]  # fmt: skip
    for query, phrase in cases:
        got = query_range(query, NOW)
        assert got is not None and got.text == phrase and phrase in query


def test_relative_ranges_follow_the_reference_now() -> None:
    four_weeks = timedelta(days=28)
    want = (LAST_WEEK[0] + four_weeks, LAST_WEEK[1] + four_weeks)
    assert bounds(query_range("на прошлой неделе", NOW + four_weeks)) == want
    aware = datetime(2024, 3, 15, 1, 0, tzinfo=timezone(timedelta(hours=5)))  # 2024-03-14 20:00 UTC
    assert bounds(query_range("yesterday", aware)) == (datetime(2024, 3, 13), datetime(2024, 3, 14))


@pytest.mark.parametrize(
    "query",
    [
        "May I ask what Melanie likes?",
        "Did they march in the parade?",
        "Who came second in the race?",
        "What did she do on Sat?",
        "the last time we met",
        "I may go now",
        "When did Caroline go to the support group?",
        "Who are my 3 best friends?",
        "I have 2 cats and a dog",
        "We met in room 101",
        "What was on TV at 10:30?",
        "How many days did the trip take?",
        "Мая подарила мне книгу",  # a name that is also a month
        "Кто приходил в гости?",
        "What happened in the year 9999?",  # past the calendar's end: no range, not an error
        "Which company signed John for an endorsement deal?",  # "an" (French "year") alone is no time
        "How often did we water them, once a day?",  # "a day" is no "a day ago"
        "What did we plant that week?",  # a unit without a number or a word placing it
    ],
)
def test_questions_without_a_date_name_no_range(query: str) -> None:
    assert query_range(query, NOW) is None


def test_the_cheap_check_needs_a_digit_or_a_relative_word() -> None:
    assert not may_name_time("May I march on Sat?")
    assert may_name_time("в 2023") and may_name_time("на прошлой неделе") and may_name_time("letzte Woche")


def test_a_query_without_a_date_never_imports_dateparser() -> None:
    code = (
        "import sys; from datetime import datetime; from rememory.timeparse import query_range, episode_time\n"
        "assert query_range('May I ask where Ilya went?', datetime(2024, 1, 1)) is None\n"
        "assert episode_time(None, 'Ilya, bridge, night') is None\n"
        "print('dateparser' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_filter_range_bounds() -> None:
    assert bounds(filter_range("2023-05-01", "2023-05-31")) == MAY_2023  # a date-only until includes its day
    assert bounds(filter_range(date(2023, 5, 1), None)) == (datetime(2023, 5, 1), None)
    start, end = bounds(filter_range(None, "2023-05-31T10:00:00+02:00"))  # type: ignore[misc]
    assert start is None and end is not None and datetime(2023, 5, 31, 8) < end < datetime(2023, 5, 31, 8, 0, 1)
    assert filter_range(None, None) is None
    assert bounds(filter_range("0001-01-01", "9999-12-31")) == (datetime(1, 1, 1), None)  # the calendar's ends


@pytest.mark.parametrize(
    ("since", "until", "named"),
    [("last tuesday", None, "since='last tuesday'"), (None, "31/05/2023", "until='31/05/2023'"),
     (20230501, None, "int 20230501"), ("0001-01-01T00:00+01:00", None, "since='0001-01-01T00:00+01:00'"),
     ("2023-06-01", "2023-05-01", "since=2023-06-01 is not before")],
)  # fmt: skip
def test_bad_bounds_are_config_errors_naming_the_value(since: object, until: object, named: str) -> None:
    with pytest.raises(ConfigError, match=r"ISO 8601|swap") as exc:
        filter_range(since, until)  # type: ignore[arg-type]
    assert named in str(exc.value)


@pytest.mark.parametrize("query", ["item 5 on the list", "Note number 7: item 10 on the list", "room 12 of the hotel"])
def test_a_number_beside_ordinary_words_names_no_date(query: str) -> None:
    assert query_range(query, NOW) is None
