"""Memory in the LLM loop: the system prompt builder, the chat session and the OpenAI-compatible proxy.

>>> from rememory.chat import build_system_prompt, DEFAULT_BASE_PROMPT
"""

from .prompt import DEFAULT_BASE_PROMPT, build_system_prompt

__all__ = ["DEFAULT_BASE_PROMPT", "build_system_prompt"]
