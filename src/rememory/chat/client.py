"""The chat loop's logic, apart from the CLI: recall, inject, ask the model, remember in the background.

:class:`ChatSession` talks to any OpenAI-compatible endpoint through the official ``openai``
client. :class:`Rememberer` trains exchanges into memory on one worker thread, so a turn never
waits for training. Exchanges longer than :data:`DEFAULT_EXCHANGE_BYTES` are cut deliberately
(see :func:`exchange_text`) before they are stored.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..config import resolve_max_text_bytes
from ..errors import ConfigError
from ..memory import Memory
from ..records import RecallHit
from .prompt import DEFAULT_BASE_PROMPT, DEFAULT_BUDGET_CHARS, build_system_prompt, recall_query

if TYPE_CHECKING:
    import openai

logger = logging.getLogger(__name__)

# A chat exchange is stored as one episode; longer ones are cut. Small cells train fast.
DEFAULT_EXCHANGE_BYTES = 4096
_CUT = " […]"

# Function words of English, the most common language of chat turns. Words of other languages are
# kept or dropped by the same length and frequency rules.
_FUNCTION_WORDS = """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing done down during each even ever every few for
    from further get got had has have having he her here hers herself him himself his how however i if
    in into is it its itself just know let like may me might more most much must my myself no nor not
    now of off on once only or other our ours ourselves out over own please really same say said shall
    she should so some such than thank thanks that the their theirs them themselves then there these
    they this those through to too under until up upon us very was we well were what when where which
    while who whom whose why will with would yes yet you your yours yourself yourselves sure okay one
    tell told want think thing things something anything going make made see way"""
_STOPWORDS = frozenset(_FUNCTION_WORDS.split())
_WORD = re.compile(r"[^\W\d_][\w'’-]*")


def derive_keywords(user: str, assistant: str = "", *, max_keywords: int = 6) -> str:
    """Salient words of an exchange, comma-separated, in order of first appearance.

    A word scores by how often it occurs (the user's words count double), with a bonus for
    capitalised words that do not start a sentence (names) and for longer words. Short words
    and common English function words are skipped. No domain rules.

    >>> derive_keywords("My sister Zoe keeps bees on the roof.", "Bees on a roof sound lovely!")
    'sister, Zoe, keeps, bees, roof, lovely'
    """
    score: dict[str, float] = defaultdict(float)
    order: dict[str, int] = {}  # first appearance
    shown: dict[str, str] = {}  # as written when it looked like a name, else lower case
    for weight, text in ((2.0, user), (1.0, assistant)):
        for m in _WORD.finditer(text):
            word = m.group().strip("'’-")
            key = word.lower()
            if len(key) < 3 or key in _STOPWORDS:
                continue
            j = m.start() - 1
            while j >= 0 and text[j].isspace():
                j -= 1
            name = word[0].isupper() and j >= 0 and text[j] not in ".!?:"
            score[key] += weight + (1.5 if name else 0.0) + min(len(key), 10) / 10
            order.setdefault(key, len(order))
            if name or key not in shown:
                shown[key] = word if name else key
    best = sorted(score, key=lambda k: (-score[k], order[k]))[:max_keywords]
    return ", ".join(shown[k] for k in sorted(best, key=order.__getitem__))


def _cut(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes at a character boundary, marked when cut."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    room = max(0, max_bytes - len(_CUT.encode("utf-8")))
    return data[:room].decode("utf-8", "ignore") + _CUT


def exchange_text(user: str, assistant: str, *, max_bytes: int = DEFAULT_EXCHANGE_BYTES) -> str:
    """One exchange as episode text: ``"User: ...\\nAssistant: ..."``, at most ``max_bytes`` UTF-8 bytes.

    When it is too long, the user's message keeps at most a third of the budget (more if the
    answer is short), the answer gets the rest, and each cut part ends with ``" […]"``.

    >>> exchange_text("Hi", "Hello!")
    'User: Hi\\nAssistant: Hello!'
    """
    head, mid = "User: ", "\nAssistant: "
    room = max_bytes - len((head + mid).encode("utf-8"))
    if room < 2 * len(_CUT.encode("utf-8")):
        raise ConfigError(f"max_bytes={max_bytes} is too small to store an exchange; use at least 64.")
    u, a = user.strip(), assistant.strip()
    nu, na = len(u.encode("utf-8")), len(a.encode("utf-8"))
    if nu + na > room:
        u_room = max(room // 3, room - na)
        u = _cut(u, u_room)
        a = _cut(a, room - len(u.encode("utf-8")))
    return f"{head}{u}{mid}{a}"


def new_episode_id() -> str:
    """A fresh, time-sortable id for a chat exchange, e.g. ``chat-20250901T090000-1a2b3c4d``."""
    return f"chat-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class _Job:
    id: str
    keywords: str
    text: str
    time: str
    namespace: str


class Rememberer:
    """Stores chat exchanges as episodes on one background thread, in submission order.

    Training takes about a second per exchange; :meth:`submit` returns at once with the id the
    episode will have. Texts are cut to ``max_bytes`` (default: 4096, or ``REMEMORY_MAX_TEXT_BYTES``
    if lower). Failures are logged and kept for :meth:`pop_errors`.

    >>> rem = Rememberer(memory)
    >>> eid = rem.submit("My sister Zoe keeps bees.", "How lovely!")
    >>> rem.wait()
    True
    >>> memory.get(eid).text
    'User: My sister Zoe keeps bees.\\nAssistant: How lovely!'
    """

    def __init__(self, memory: Memory, *, max_bytes: int | None = None):
        self._memory = memory
        self.max_bytes = min(DEFAULT_EXCHANGE_BYTES, resolve_max_text_bytes(None)) if max_bytes is None else max_bytes
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._cond = threading.Condition()
        self._errors: list[tuple[str, Exception]] = []
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, user: str, assistant: str, *, namespace: str = "default", id: str | None = None) -> str:
        """Queue one exchange for training; returns its episode id."""
        text = exchange_text(user, assistant, max_bytes=self.max_bytes)
        job = _Job(id or new_episode_id(), derive_keywords(user, assistant), text,
                   datetime.now(timezone.utc).replace(microsecond=0).isoformat(), namespace)  # fmt: skip
        with self._cond:
            if self._closed:
                raise ConfigError("This Rememberer is closed; create a new one to store more exchanges.")
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="rememory-remember", daemon=True)
                self._thread.start()
        self._queue.put(job)
        return job.id

    @property
    def pending(self) -> int:
        """Exchanges queued or being trained."""
        with self._cond:
            return self._pending

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted exchange is stored (or failed); ``False`` if ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def pop_errors(self) -> list[tuple[str, Exception]]:
        """The (episode id, error) pairs of exchanges that could not be stored since the last call."""
        with self._cond:
            errors, self._errors = self._errors, []
        return errors

    def close(self, timeout: float | None = None) -> bool:
        """Finish the queued exchanges (up to ``timeout`` seconds) and stop the worker."""
        done = self.wait(timeout)
        with self._cond:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            if done:
                thread.join(timeout)
        if not done:
            logger.warning("%d exchange(s) were still training at close and may not be stored.", self.pending)
        return done

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._memory.add(job.keywords, job.text, id=job.id, time=job.time, namespace=job.namespace)
            except Exception as exc:  # reported, never lost: the worker must survive a bad exchange
                logger.warning("Could not remember exchange %s: %s", job.id, exc)
                with self._cond:
                    self._errors.append((job.id, exc))
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()


@dataclass(frozen=True)
class Reply:
    """One answered turn: the assistant's text, the episodes injected, and the id it is stored under."""

    text: str
    hits: list[RecallHit]
    episode_id: str | None = None


class ChatSession:
    """A dialogue with an OpenAI-compatible model whose system prompt carries recalled episodes.

    Before each turn it recalls from the user's message plus the recent context and rebuilds
    the system prompt. With ``remember=True`` each exchange is trained into memory in the
    background. Errors of the ``openai`` client (unreachable server, bad model...) propagate.

    >>> client = openai.OpenAI(base_url="http://localhost:11434/v1", api_key="unused")  # doctest: +SKIP
    >>> session = ChatSession(Memory(), client, "llama3.2", remember=True)  # doctest: +SKIP
    >>> session.ask("Do you remember the bridge?").text  # doctest: +SKIP
    '...'
    """

    def __init__(
        self,
        memory: Memory,
        client: openai.OpenAI,
        model: str,
        *,
        namespace: str = "default",
        top_k: int = 3,
        remember: bool = False,
        base_prompt: str = DEFAULT_BASE_PROMPT,
        budget_chars: int = DEFAULT_BUDGET_CHARS,
        history_messages: int = 8,  # recent user/assistant messages resent each turn
        max_tokens: int | None = None,
        temperature: float | None = None,
    ):
        if history_messages < 0:
            raise ConfigError(f"history_messages must be 0 or more, got {history_messages}.")
        self.memory, self.client, self.model = memory, client, model
        self.namespace, self.top_k, self.remember = namespace, top_k, remember
        self.base_prompt, self.budget_chars = base_prompt, budget_chars
        self.history_messages, self.max_tokens, self.temperature = history_messages, max_tokens, temperature
        self.history: list[dict[str, str]] = []
        self.last_hits: list[RecallHit] | None = None  # None: no turn yet
        self.last_system_prompt: str | None = None
        self.rememberer = Rememberer(memory)

    def ask(self, text: str, *, on_delta: Callable[[str], None] | None = None) -> Reply:
        """Answer one user message, streaming the answer's pieces to ``on_delta`` as they arrive."""
        if not text.strip():
            raise ConfigError("The message is empty; type something to say.")
        user = {"role": "user", "content": text}
        query = recall_query([*self.history, user])
        hits = self.memory.recall(query, top_k=self.top_k, namespace=self.namespace) if query else []
        system = build_system_prompt(self.base_prompt, hits, self.budget_chars)
        self.last_hits, self.last_system_prompt = hits, system
        messages: Sequence[Any] = [{"role": "system", "content": system}, *self.history, user]
        extra: dict[str, Any] = {}
        if self.max_tokens is not None:
            extra["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            extra["temperature"] = self.temperature
        stream = self.client.chat.completions.create(model=self.model, messages=messages, stream=True, **extra)
        parts: list[str] = []
        for chunk in stream:
            for choice in chunk.choices:
                piece = choice.delta.content if choice.index == 0 and choice.delta else None
                if piece:
                    parts.append(piece)
                    if on_delta is not None:
                        on_delta(piece)
        answer = "".join(parts)
        self.history += [user, {"role": "assistant", "content": answer}]
        if self.history_messages:
            self.history = self.history[-self.history_messages :]
        else:
            self.history = []
        episode_id = None
        if self.remember and answer.strip():
            episode_id = self.rememberer.submit(text, answer, namespace=self.namespace)
        return Reply(answer, hits, episode_id)

    def close(self, timeout: float | None = None) -> bool:
        """Wait for exchanges still training (up to ``timeout`` seconds); ``False`` if some were not stored."""
        return self.rememberer.close(timeout)
