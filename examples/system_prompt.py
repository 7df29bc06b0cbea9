"""The seed's system-prompt example: recalled episodes injected into an LLM's system prompt.

    rememory train examples/episodes.json
    python examples/system_prompt.py "walking on a bridge with Ilya"

Send the printed prompt as the system message of your next chat turn; ``rememory chat`` and
``rememory serve --upstream URL`` do this for you before every turn.
"""

from __future__ import annotations

import sys

from rememory import Memory
from rememory.chat import DEFAULT_BASE_PROMPT, build_system_prompt


def system_prompt_for(memory: Memory, message: str, *, top_k: int = 3) -> str:
    """The system prompt for a turn whose user message is ``message``."""
    hits = memory.recall(message, top_k=top_k)
    return build_system_prompt(DEFAULT_BASE_PROMPT, hits)


def main(argv: list[str]) -> None:
    message = argv[0] if argv else "walking on a bridge with Ilya"
    with Memory() as memory:  # the default store: $REMEMORY_STORE, else the per-user one
        print(system_prompt_for(memory, message))


if __name__ == "__main__":
    main(sys.argv[1:])
