"""Every size limit of the public contract, in one place.

The Python API, the CLI, REST and MCP all read these, so that one interface never accepts what
another refuses. The episode text limit is a default: ``max_text_bytes`` /
``REMEMORY_MAX_TEXT_BYTES`` change it per store opening, and the interfaces report the value
in force, not this constant.
"""

from __future__ import annotations

# An episode's text, in UTF-8 bytes (long texts make big, slow cells; chat turns and notes are far below this).
DEFAULT_MAX_TEXT_BYTES = 16384
# An episode's keywords, in UTF-8 bytes: they are a key, not a second text.
MAX_KEYWORDS_BYTES = 4096
# Ids and namespaces, in characters.
MAX_ID_CHARS = 256
# A recall query, in characters.
MAX_QUERY_CHARS = 8192
# Hits one recall returns: more would flood a prompt, and every hit is decoded.
MAX_TOP_K = 100
# Episodes one list page returns.
MAX_PAGE = 100
# Episodes one add request (REST) carries.
MAX_BATCH = 1000
