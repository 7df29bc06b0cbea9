"""Times of episodes and time ranges of queries, in several languages, with ``dateparser``.

An episode's time is its ``time`` field (ISO 8601) or, when it has none, a date written in
its keywords ("Caroline, 1:56 pm on 8 May, 2023", "Ира, 8 мая 2023"). A query's time range
comes from what it says: "in May 2023" is the month, "last week" and "на прошлой неделе"
the previous week relative to ``now``, "before 3 June 2023" an open range.

``dateparser`` takes about 0.3 s to import and a few milliseconds a call, so it is loaded
only when a text passes a cheap check (a digit, or a word of a relative time such as
"yesterday", "неделе", "Woche"): recall of a query that names no time never imports it.
All times are compared as naive UTC: an aware time is converted, a naive one taken as UTC
(as :func:`rememory.episodes.normalize_time` stores it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from .errors import ConfigError

LANGUAGES = ("en", "ru", "de", "fr", "es", "it", "pt", "uk")  # fewer languages: faster and fewer false dates

# Words of a relative time ("yesterday", "last week", "две недели назад"): a text with none of them and no
# digit names no date, whatever dateparser would make of "may", "march" or "sat". Stems, lowercase. The ones
# that name a time by themselves, per language ("yesterday", "3 days ago"):
_SELF_DATED = (
    r"yesterday|today|tonight|tomorrow|ago"
    r"|вчера|позавчера|сегодня|завтра|назад"
    r"|учора|вчора|сьогодні|тому"
    r"|gestern|vorgestern|heute|morgen"
    r"|hier|avant-hier|aujourd'hui|demain"
    r"|ayer|anteayer|hoy|mañana|hace"
    r"|ieri|oggi|domani|fa"
    r"|ontem|hoje|amanhã|atrás"
)
# The units ("day", "week", or French "an", also the English article), which name one only with a number or a
# word placing them (_PLACING: "last week", "в этом году"): otherwise "an ankle injury" reads as January and
# "once a day" as yesterday.
_UNITS = (
    r"days?|weeks?|weekend|fortnight|months?|years?"
    r"|дн(?:я|ей|ь)|день|недел\w*|месяц\w*|год(?:а|у)?|лет"
    r"|тижн\w*|тиждень|місяц\w*|рок(?:у|ів)?"
    r"|tag(?:e|en)?|woche\w*|monat\w*|jahr\w*"
    r"|jours?|semaines?|mois|ans?|années?"
    r"|días?|semanas?|mes(?:es)?|años?"
    r"|giorni?|settimana|settimane|mesi?|anni?"
    r"|dias?|meses|anos?"
)
# Not in _RELATIVE_RE: alone, "this" or "ce" says nothing of a time, and such a query must not import dateparser.
_PLACING = (
    r"last|next|this|past|previous|coming"
    r"|прошл\w*|позапрошл\w*|следующ\w*|будущ\w*|эт(?:от|ой|ом|у|им)"
    r"|минул\w*|наступн\w*|ц(?:ей|ього|ьому|ю|ій)"
    r"|letzte\w*|nächste\w*|diese\w*|vergangene\w*|kommende\w*"
    r"|derni(?:er|ère)|prochaine?|cette|ce|passée?"
    r"|pasad[oa]|próxim[oa]|este|esta"
    r"|scors[oa]|prossim[oa]|quest[oa]"
    r"|passad[oa]"
)
_RELATIVE_RE = re.compile(rf"(?<!\w)(?:{_SELF_DATED}|{_UNITS})(?!\w)", re.IGNORECASE)
_ANCHORED_RE = re.compile(rf"(?<!\w)(?:{_SELF_DATED}|{_PLACING})(?!\w)", re.IGNORECASE)
_DIGIT_RE = re.compile(r"\d")
_YEAR_RE = re.compile(r"(?<!\d)(1[89]\d\d|2[01]\d\d)(?!\d)")
_NUMERIC_DATE_RE = re.compile(r"\d{1,4}[./-]\d{1,2}(?:[./-]\d{1,4})?")
_WORD_RE = re.compile(r"[\w'.:/-]+")
_EDGE = ".,:;!?"  # punctuation a word may end (or start) with that is not part of it

# Words that open a range before or after the date that follows them.
_BEFORE = {"before", "until", "till", "до", "перед", "вплоть", "bis", "vor", "avant", "jusqu'au", "antes", "hasta",
           "prima", "fino", "até"}  # fmt: skip
_AFTER = {"after", "после", "nach", "après", "después", "dopo", "depois"}
_SINCE = {"since", "from", "с", "со", "начиная", "seit", "ab", "depuis", "desde", "dal", "da"}

# Russian and Ukrainian months in the prepositional case ("в мае"), which dateparser does not read.
_PREPOSITIONAL = {
    "январе": "январь", "феврале": "февраль", "марте": "март", "апреле": "апрель", "мае": "май", "июне": "июнь",
    "июле": "июль", "августе": "август", "сентябре": "сентябрь", "октябре": "октябрь", "ноябре": "ноябрь",
    "декабре": "декабрь",
}  # fmt: skip

_MAX_SPAN = 6  # words in one date phrase ("1:56 pm on 8 May, 2023")


@dataclass(frozen=True)
class TimeRange:
    """A half-open range [start, end) of naive UTC datetimes; ``None`` leaves that side open."""

    start: datetime | None
    end: datetime | None
    text: str = ""  # the phrase of the query it was read from, verbatim ("October 25, 2022")

    def contains(self, t: datetime) -> bool:
        return (self.start is None or t >= self.start) and (self.end is None or t < self.end)


def to_utc(t: datetime) -> datetime:
    """``t`` as a naive UTC datetime (a naive ``t`` is taken as UTC already)."""
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo is not None else t


def may_name_time(text: str) -> bool:
    """Whether ``text`` could name a date: a digit or a relative-time word. Cheap: no dateparser."""
    return bool(_DIGIT_RE.search(text) or _RELATIVE_RE.search(text))


def episode_time(time_field: str | None, keywords: str) -> datetime | None:
    """An episode's time (naive UTC): its ``time`` field, else a date found in its keywords, else None.

    >>> episode_time(None, "Caroline, 1:56 pm on 8 May, 2023")
    datetime.datetime(2023, 5, 8, 13, 56)
    """
    if time_field:
        try:
            return to_utc(datetime.fromisoformat(time_field))
        except ValueError:
            pass  # a time stored before validation existed: its keywords may still date it
    return keywords_time(keywords) if _DIGIT_RE.search(keywords) else None


def episode_seconds(time_field: str | None, keywords: str) -> float | None:
    """:func:`episode_time` as epoch seconds (what a store keeps in ``event_time``), or None."""
    t = episode_time(time_field, keywords)
    return None if t is None else t.replace(tzinfo=timezone.utc).timestamp()


def backfill_event_times(read: Callable[[int], list[Any]], write: Callable[[list[tuple[float, int]]], object]) -> None:
    """Set the ``event_time`` of stored rows from their time and keywords, in rowid order.

    ``read(last)`` returns the next batch of (rowid, time, keywords) after rowid ``last`` (empty: done);
    ``write`` sets the (event_time, rowid) pairs it is given. Rows with no time stay NULL.
    """
    last = 0
    while batch := read(last):
        last = int(batch[-1][0])
        write([(t, int(r)) for r, time_field, kw in batch if (t := episode_seconds(time_field, kw or "")) is not None])


def keywords_time(keywords: str) -> datetime | None:
    """The first dated phrase with a year in ``keywords``, read with ``dateparser``.

    Keywords are comma-separated words; only the runs of parts that hold a digit are read
    ("Caroline, 1:56 pm on 8 May, 2023" reads "1:56 pm on 8 May, 2023"), each run once per
    process: the episodes of one day share it, and a sync of a large namespace may ask thousands.
    A date without a year is not used: the year it would get is a guess.
    """
    run: list[str] = []
    for part in [*keywords.split(","), ""]:  # the empty part closes the last run
        if _DIGIT_RE.search(part):
            run.append(part.strip())
        elif run:
            found = _run_time(tuple(run))
            if found is not None:
                return found
            run = []
    return None


@functools.lru_cache(maxsize=65536)
def _run_time(parts: tuple[str, ...]) -> datetime | None:
    """The date that consecutive keyword parts name: the longest few parts that parse whole as a date
    with a year ("8 May, 2023" in "room 12, 8 May, 2023"), else one that ``search_dates`` finds in a part."""
    for size in range(min(len(parts), 3), 0, -1):
        for i in range(len(parts) - size + 1):
            text = ", ".join(parts[i : i + size])
            if _YEAR_RE.search(text) or _NUMERIC_DATE_RE.search(text):
                when = _keyword_parser(tuple(_languages(text))).get_date_data(text).date_obj
                if when is not None:
                    return to_utc(when)
    from dateparser.search import search_dates

    for part in parts:  # a date inside other words: "party on 8 May 2023"
        settings = _settings(datetime(2000, 1, 1))
        for span, when in search_dates(part, languages=_languages(part), settings=settings) or ():
            if _YEAR_RE.search(span) or _NUMERIC_DATE_RE.search(span):
                return to_utc(when)
    return None


@functools.lru_cache(maxsize=4)
def _keyword_parser(languages: tuple[str, ...]) -> Any:
    from dateparser.date import DateDataParser

    return DateDataParser(languages=list(languages), settings=_settings(datetime(2000, 1, 1)))


def _languages(text: str) -> list[str]:
    """The languages of :data:`LANGUAGES` written in ``text``'s script (fewer to try: faster)."""
    cyrillic = bool(_CYRILLIC_RE.search(text))
    return [lang for lang in LANGUAGES if (lang in ("ru", "uk")) == cyrillic]


_CYRILLIC_RE = re.compile(r"[а-яёіїєґ]", re.IGNORECASE)


def query_range(query: str, now: datetime) -> TimeRange | None:
    """The time range that ``query`` names, relative to ``now``, or None when it names none.

    A date phrase becomes the day, week, month or year it names; "before"/"until" and
    "after"/"since" (and their equivalents in :data:`LANGUAGES`) open the range on one side.
    A phrase must hold a digit or a relative-time word: "May I ask", "march", "sat" are no dates.

    >>> query_range("What did I do in May 2023?", datetime(2024, 1, 1))
    TimeRange(start=datetime.datetime(2023, 5, 1, 0, 0), end=datetime.datetime(2023, 6, 1, 0, 0), text='May 2023')
    """
    if not may_name_time(query):
        return None
    now = to_utc(now)
    found = []  # (start, end, word): each word without the punctuation around it, and where it is in the query
    for m in _WORD_RE.finditer(query):
        at = m.start() + len(m.group()) - len(m.group().lstrip(_EDGE))
        word = m.group().strip(_EDGE)
        found.append((at, at + len(word), word))
    words = [w for _, _, w in found]
    norm = [_PREPOSITIONAL.get(w.lower(), w) for w in words]
    anchor = [bool(w) and may_name_time(w) for w in norm]
    best: tuple[tuple[int, int, int], int, int, tuple[datetime, datetime, str]] | None = None
    for i in range(len(norm)):
        for j in range(i + 1, min(i + _MAX_SPAN, len(norm)) + 1):
            if not any(anchor[i:j]):
                continue
            span = " ".join(norm[i:j])
            if not _dated(span):
                continue
            got = _parse(span, now)
            if got is None:
                continue
            # More date words first ("3 days ago" over "do 3"), then the finer period ("May 2023" over
            # "2023"), then the shorter phrase ("May 2023" over "in May 2023").
            rank = (sum(anchor[i:j]), -_PERIODS.index(got[2]), -(j - i))
            if best is None or rank > best[0]:
                best = (rank, i, j, got)
    if best is None:
        return None
    _, i, j, (start, end, _period) = best
    shown = query[found[i][0] : found[j - 1][1]]  # as the query writes it: "October 25, 2022"
    opener = {w.lower() for w in words[max(0, i - 2) : i + 1]}  # "before 3 June", "after the 8th of May"
    if opener & _BEFORE:
        return TimeRange(None, start, shown)
    if opener & _AFTER:
        return TimeRange(end, None, shown)
    if opener & _SINCE:
        return TimeRange(start, None, shown)
    return TimeRange(start, end, shown)


_PERIODS = ("day", "week", "month", "year")


def _dated(span: str) -> bool:
    """Whether a phrase names a date and not only a number: a numeric date; a relative time with a number or a
    word placing it ("3 days ago", "last week"); a year; a day number with a calendar word ("8 May", "Tuesday 3").
    Never "3" or "10:30" alone, a bare unit ("an", "a day"), or a day without its month ("25 2022")."""
    if _NUMERIC_DATE_RE.search(span):
        return True
    if _RELATIVE_RE.search(span) and (_ANCHORED_RE.search(span) or _DIGIT_RE.search(span)):
        return True
    numbers = [w for w in span.split() if _DIGIT_RE.search(w)]
    if not numbers:
        return False
    if all(_YEAR_RE.fullmatch(w) for w in numbers):
        return True
    letters = [w for w in span.split() if not _DIGIT_RE.search(w) and w.lower() not in ("am", "pm", "on", "at")]
    # A day number needs its month or weekday beside it: "item 5 on the list" names no date, and in "25 2022" (from
    # "October 25, 2022") dateparser would take the month from today.
    return any(_calendar_word(w.lower()) for w in letters)


@functools.lru_cache(maxsize=4096)
def _calendar_word(word: str) -> bool:
    """Whether ``word`` alone names a month or a weekday in one of :data:`LANGUAGES` (per dateparser)."""
    return _parser(datetime(2000, 1, 1)).get_date_data(word).date_obj is not None


def _settings(now: datetime) -> dict[str, Any]:
    return {"RELATIVE_BASE": now, "PREFER_DATES_FROM": "past", "STRICT_PARSING": False}


@functools.lru_cache(maxsize=8)
def _parser(now: datetime) -> Any:
    from dateparser.date import DateDataParser

    return DateDataParser(languages=list(LANGUAGES), settings=_settings(now))


def _parse(span: str, now: datetime) -> tuple[datetime, datetime, str] | None:
    """[start, end) of the day, week, month or year that ``span`` names and that period, or None."""
    data = _parser(now).get_date_data(span)
    if data.date_obj is None:
        return None
    period = data.period if data.period in _PERIODS else "day"  # a time of day: the day it falls on
    try:
        return _period_range(to_utc(data.date_obj).date(), period)
    except (ValueError, OverflowError):  # "year 9999": a range past the calendar's end names no time we hold
        return None


def _period_range(d: date, period: str) -> tuple[datetime, datetime, str]:
    if period == "year":
        start = date(d.year, 1, 1)
        end = date(d.year + 1, 1, 1)
    elif period == "month":
        start = date(d.year, d.month, 1)
        end = date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    elif period == "week":
        start = d - timedelta(days=d.weekday())
        end = start + timedelta(days=7)
    else:
        start, end = d, d + timedelta(days=1)
    return datetime.combine(start, time()), datetime.combine(end, time()), period


def _bound(value: str | datetime | date, name: str) -> tuple[datetime, bool]:
    """A ``since``/``until`` value as a naive UTC datetime, and whether it was a date alone."""
    if isinstance(value, datetime):
        return to_utc(value), False
    if isinstance(value, date):
        return datetime.combine(value, time()), True
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be an ISO 8601 date or time (e.g. 2023-05-01 or 2023-05-01T13:56), "
                          f"got {type(value).__name__} {value!r}.")  # fmt: skip
    text = value.strip()
    try:
        return to_utc(datetime.fromisoformat(text)), len(text) == 10
    except (ValueError, OverflowError):  # OverflowError: an offset that moves it past year 1 or 9999
        raise ConfigError(
            f"{name}={value!r} is not an ISO 8601 date or time; write it like 2023-05-01 or 2023-05-01T13:56:00+02:00."
        ) from None


def filter_range(since: str | datetime | date | None, until: str | datetime | date | None) -> TimeRange | None:
    """The range of a recall's ``since`` and ``until``, both inclusive (a date alone as ``until``
    includes its whole day), or None when neither is given.

    Raises :class:`ConfigError` naming a value that is not an ISO 8601 date or time, or an empty range.

    >>> filter_range("2023-05-01", "2023-05-31")
    TimeRange(start=datetime.datetime(2023, 5, 1, 0, 0), end=datetime.datetime(2023, 6, 1, 0, 0), text='')
    """
    start = _bound(since, "since")[0] if since is not None else None
    stop = None
    if until is not None:
        t, whole_day = _bound(until, "until")
        try:
            stop = t + (timedelta(days=1) if whole_day else timedelta(microseconds=1))
        except OverflowError:  # until 9999-12-31: nothing is later
            stop = None
    if start is None and stop is None:
        return None
    if start is not None and stop is not None and start >= stop:
        raise ConfigError(f"since={since!s} is not before until={until!s}; swap them or widen the range.")
    return TimeRange(start, stop)
