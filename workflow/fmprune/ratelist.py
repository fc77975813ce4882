"""The seeds' ``compress_rate`` strings, parsed by a grammar instead of ``eval``.

    expr   := term ('+' term)*
    term   := list ('*' INT)?
    list   := '[' number (',' number)* ']'
    number := a decimal float such as 0, 0., .5, 0.18, 1e-1

Every rate must lie in [0, 1) (a target's ``shape`` holds relative rates: [0, 1]). Repeat
counts are bounded before anything is expanded: ``[0.1]*99999999999999`` is a one-line error,
not a MemoryError.
"""
from __future__ import annotations

import re

from . import FmpruneError

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<op>[\[\],+*]))"
)


def _tokens(text: str):
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            return
        match = _TOKEN.match(text, pos)
        if not match:
            raise FmpruneError(f"rate list {text!r}: unexpected {text[pos:].strip()[:10]!r} at position {pos}")
        pos = match.end()
        yield (match.group("number"), "number") if match.group("number") else (match.group("op"), "op")


MAX_ENTRIES = 100_000


def parse_rates(text: str, closed: bool = False, max_entries: int = MAX_ENTRIES) -> list[float]:
    """``"[0.]+[0.18]*2"`` -> ``[0.0, 0.18, 0.18]``; a malformed string is a one-line error.

    ``closed=True`` admits 1 (a shape's relative rates, scaled before use). A list that would
    expand to more than ``max_entries`` rates is refused before it is expanded.
    """
    if not isinstance(text, str) or not text.strip():
        raise FmpruneError(f"rate list {text!r}: empty (expected e.g. \"[0.]+[0.18]*29\")")
    tokens = list(_tokens(text))
    pos = 0

    def expect(value: str | None = None, kind: str = "op") -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise FmpruneError(f"rate list {text!r}: ends early, expected {value or kind}")
        tok, tok_kind = tokens[pos]
        if tok_kind != kind or (value is not None and tok != value):
            raise FmpruneError(f"rate list {text!r}: expected {value or kind}, found {tok!r}")
        pos += 1
        return tok

    def peek() -> str | None:
        return tokens[pos][0] if pos < len(tokens) else None

    rates: list[float] = []
    while True:
        expect("[")
        items = [float(expect(kind="number"))]
        while peek() == ",":
            expect(",")
            items.append(float(expect(kind="number")))
        expect("]")
        if peek() == "*":
            expect("*")
            count = expect(kind="number")
            if not count.isdigit():
                raise FmpruneError(f"rate list {text!r}: repeat count {count!r} is not a whole number")
            if len(rates) + len(items) * int(count) > max_entries:
                raise FmpruneError(f"rate list {text!r}: expands to more than {max_entries:,} entries")
            items = items * int(count)
        elif len(rates) + len(items) > max_entries:
            raise FmpruneError(f"rate list {text!r}: expands to more than {max_entries:,} entries")
        rates.extend(items)
        if peek() is None:
            break
        expect("+")
    bad = [r for r in rates if not (0.0 <= r <= 1.0 if closed else 0.0 <= r < 1.0)]
    if bad:
        raise FmpruneError(f"rate list {text!r}: rates must lie in [0, {'1]' if closed else '1)'}, found {bad[0]}")
    return rates
