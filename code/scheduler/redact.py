"""Hiding credentials in database URLs: the one function everything that prints or logs a URL uses.

Parsers disagree about where a password with a raw '@', '/', '?' or '#' ends:
SQLAlchemy (which connects) takes the password up to the first '@', libpq up to
the first '@' before any '/', and a reader may take it up to the last '@'. So
the redaction masks the union of every span any of them could read as a secret:
the password of the userinfo under each reading, and the value of every
`password`, `sslpassword` or `passfile` parameter (keys percent-decoded, as
libpq and SQLAlchemy decode them). Over-masking is the safe side of a
disagreement.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

SECRET_PARAMS = frozenset({"password", "sslpassword", "passfile"})
MASK = "***"
_PARAM = re.compile(r"[?&]([^?&=#]*)=([^&]*)")


def redact_url(url: str) -> str:
    """`url` with every credential-bearing part shown as ***; other text unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    offset = len(scheme) + len(sep)
    spans = [(offset + a, offset + b) for a, b in _userinfo_spans(rest)]
    spans += [m.span(2) for m in _PARAM.finditer(url) if unquote(m.group(1)).strip() in SECRET_PARAMS]
    return _mask(url, spans)


def _userinfo_spans(rest: str) -> list[tuple[int, int]]:
    """Where the password may be, under each parser's idea of where the userinfo ends."""
    colon = rest.find(":")
    ends = {rest.find("@"), rest.rfind("@")}  # SQLAlchemy and libpq: the first '@'; a reader: the last
    return [(colon + 1, end) for end in ends if end >= 0 and 0 <= colon < end]


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    """Replace the union of `spans` by MASK, one per run; an empty span still shows MASK."""
    if not spans:
        return text
    out: list[tuple[int, int]] = []
    cursor = 0
    for start, end in sorted(spans):
        if start < cursor:  # overlaps the previous run: extend it
            out[-1] = (out[-1][0], max(out[-1][1], end))
            cursor = max(cursor, end)
            continue
        out.append((start, end))
        cursor = end
    pieces: list[str] = []
    last = 0
    for start, end in out:
        pieces += [text[last:start], MASK]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)
