"""Client-controlled text on its way into a log line.

An event name, a request path, a user name or a reason a client sent may hold a newline (a
forged log line), other control characters (a terminal escape), a right-to-left override (a
line that reads differently from what it says) or simply be huge. :func:`safe_log` makes such
a value one bounded, printable run of text: every character that is not printable is written
as its Python escape (``\\n``, ``\\x1b``, ``\\u202e``) and the value is cut to ``limit``
characters. Values the hall made itself (socket ids, ticket ids) need none of this.
"""

from __future__ import annotations

__all__ = ["safe_log"]

DEFAULT_LIMIT = 200


def safe_log(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` as one line of at most ``limit`` printable characters (plus "…" if cut)."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                       for ch in text)
        if len(text) > limit:
            text, cut = text[:limit], True
    return text + "…" if cut else text
