"""Text from outside (case files, candidate names and messages, paths) made safe to print.

A case description or a candidate's exception message can hold ESC sequences that recolour,
retitle or clear a terminal, or bidi overrides that make a line read differently from what it
is. Everything softaudit prints from such sources goes through :func:`printable` first.
"""

from __future__ import annotations

import unicodedata


def printable(text: object) -> str:
    """``str(text)`` with every control or format character except newline and tab shown as a
    Python-style escape (``\\x1b``, ``\\u202e``), so nothing in it can drive the terminal."""
    s = str(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        if ch in "\n\t" or ch.isprintable():
            out.append(ch)
        elif unicodedata.category(ch) in ("Zl", "Zp", "Zs"):
            out.append(ch.encode("unicode_escape").decode("ascii") if ch != " " else ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def printable_markup(text: object) -> str:
    """printable(text), with rich's markup brackets escaped too, for strings printed with markup on."""
    from rich.markup import escape

    return escape(printable(text))
