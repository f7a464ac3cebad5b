"""The values of ``prefork bench``'s command line: pure parsers, each raising ValueError with
one line saying what is wrong (:func:`prefork.bench.main` prints it as a usage error).

Times come back in seconds (``10s``, ``500ms``, ``1m`` on the command line), sizes in bytes
(``512M``, ``2G``, ``1.5GiB``: K = 1024 bytes, as the server's memory settings count them),
payloads as bytes (``\\n``, ``\\xHH`` escapes). Numbers are ASCII digits only (not the other
digits of Unicode ``int()`` takes), and finite.
"""

from __future__ import annotations

import math
import re

#: The most pool sizes, and the largest, one invocation may ask for.
MAX_POOL_SIZE = 1024
#: The most requests in flight one invocation may ask for.
MAX_CONCURRENCY = 10_000
#: The largest size (bytes) and time (seconds) a value may give: 1 EiB, 1,000 days.
MAX_SIZE = 1 << 60
MAX_SECONDS = 1000 * 86400.0

#: A number: ASCII digits (re.ASCII, so that \d is [0-9]), a decimal point at most.
NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"^\s*{NUMBER}\s*(ms|s|m|h)?\s*$", re.ASCII)
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(rf"^\s*{NUMBER}\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE | re.ASCII)
_INTEGER = re.compile(r"^\s*\d{1,100}\s*$", re.ASCII)  # no more digits than int() takes at ease
_FLOAT = re.compile(rf"^\s*{NUMBER}(?:e[+-]?\d+)?\s*$", re.IGNORECASE | re.ASCII)


def shown(text: str, most: int = 24) -> str:
    """``text`` quoted as Python would (``repr``), cut to about ``most`` characters with
    ``...``: a value in an error line. Raises nothing."""
    return repr(text) if len(text) <= most else repr(text[:most]) + "..."


def integer(text: str) -> int:
    """A whole number of ASCII digits (an argparse ``type``). Raises ValueError."""
    if not _INTEGER.match(text):
        raise ValueError(f"not a whole number: {shown(text)}")
    return int(text)


def number(text: str) -> float:
    """A finite decimal number of ASCII digits, ``2.5`` or ``1e3`` (an argparse ``type``).
    Raises ValueError."""
    value = float(text) if _FLOAT.match(text) else math.nan
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {shown(text)}")
    return value


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``10``, ``2.5s``, ``500ms``, ``1m``, ``1h``; at most
    :data:`MAX_SECONDS`. Raises ValueError."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"bad duration {shown(text)}: expected a number with an optional ms, s, m or h")
    seconds = float(match[1]) * _SCALE[match[2]]
    if not seconds <= MAX_SECONDS:  # inf too
        raise ValueError(f"bad duration {shown(text)}: at most {MAX_SECONDS / 86400:g} days")
    return seconds


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``1073741824``, ``512M``, ``2G``, ``1.5GiB``, ``64KB`` (K, M, G, T are
    powers of 1024, with or without ``i`` and ``B``, as the server's memory settings).

    Raises ValueError unless it is such a size of at least one byte and at most
    :data:`MAX_SIZE`.
    """
    match = _SIZE.match(text)
    if match is None or (not match[2] and "i" in match[3].lower()):
        raise ValueError(
            f"bad size {shown(text)}: expected bytes, or a number with K, M, G or T (512M, 2G, 1.5GiB)"
        )
    size = float(match[1]) * (1 << (10 * " kmgt".index(match[2].lower() or " ")))
    if not size <= MAX_SIZE:  # inf too
        raise ValueError(f"bad size {shown(text)}: at most 1 EiB")
    if size < 1:
        raise ValueError(f"bad size {shown(text)}: must be at least 1 byte")
    return int(size)


def parse_pool_sizes(text: str) -> list[int]:
    """Pool sizes in ``1,2,4,8`` (ascending, without repeats). Raises ValueError."""
    parts = [part for part in text.split(",") if part.strip()]
    if not all(_INTEGER.match(part) for part in parts):
        raise ValueError(f"bad pool sizes {shown(text)}: expected numbers separated by commas")
    sizes = sorted({int(part) for part in parts})
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_POOL_SIZE:
        raise ValueError(f"bad pool sizes {shown(text)}: each must be 1 to {MAX_POOL_SIZE}")
    return sizes


def parse_concurrency(text: str) -> tuple[int, bool]:
    """``64`` (requests in flight) or ``2x`` (per worker): (number, per_worker).

    Raises ValueError unless the number is 1 to :data:`MAX_CONCURRENCY`.
    """
    per_worker = text.endswith("x")
    if not _INTEGER.match(text.removesuffix("x")):
        raise ValueError(f"bad concurrency {shown(text)}: expected N or Nx (N per worker)")
    value = int(text.removesuffix("x"))
    if not 1 <= value <= MAX_CONCURRENCY:
        raise ValueError(f"bad concurrency {shown(text)}: must be 1 to {MAX_CONCURRENCY}")
    return value, per_worker


_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[nrt0\\])")
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}


def unescape(text: str) -> bytes:
    r"""``text`` as UTF-8 bytes, with ``\n``, ``\r``, ``\t``, ``\0``, ``\\`` and ``\xHH`` decoded.

    Other backslashes stay as they are. Raises UnicodeEncodeError (a ValueError) for text
    that is not valid Unicode (undecodable bytes of a command line).
    """

    def one(match: re.Match[bytes]) -> bytes:
        code = match[1]
        return bytes([int(code[1:], 16)]) if code.startswith(b"x") else _ESCAPES[code]

    return _ESCAPE.sub(one, text.encode())
