"""The values of ``prefork bench``'s command line: pure parsers, each raising ValueError with
one line saying what is wrong (:func:`prefork.bench.main` prints it as a usage error).

Times come back in seconds (``10s``, ``500ms``, ``1m`` on the command line), sizes in bytes
(``512M``, ``2G``, ``1.5GiB``: K = 1024 bytes, as the server's memory settings count them),
payloads as bytes (``\\n``, ``\\xHH`` escapes).
"""

from __future__ import annotations

import re

#: The most pool sizes, and the largest, one invocation may ask for.
MAX_POOL_SIZE = 1024
#: The most requests in flight one invocation may ask for.
MAX_CONCURRENCY = 10_000

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"^\s*{_NUMBER}\s*(ms|s|m|h)?\s*$")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(rf"^\s*{_NUMBER}\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``10``, ``2.5s``, ``500ms``, ``1m``, ``1h``. Raises ValueError."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"bad duration {text!r}: expected a number with an optional ms, s, m or h")
    return float(match[1]) * _SCALE[match[2]]


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``1073741824``, ``512M``, ``2G``, ``1.5GiB``, ``64KB`` (K, M, G, T are
    powers of 1024, with or without ``i`` and ``B``, as the server's memory settings).

    Raises ValueError unless it is such a size of at least one byte.
    """
    match = _SIZE.match(text)
    if match is None or (not match[2] and "i" in match[3].lower()):
        raise ValueError(
            f"bad size {text!r}: expected bytes, or a number with K, M, G or T (512M, 2G, 1.5GiB)"
        )
    size = int(float(match[1]) * (1 << (10 * " kmgt".index(match[2].lower() or " "))))
    if size < 1:
        raise ValueError(f"bad size {text!r}: must be at least 1 byte")
    return size


def parse_pool_sizes(text: str) -> list[int]:
    """Pool sizes in ``1,2,4,8`` (ascending, without repeats). Raises ValueError."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"bad pool sizes {text!r}: expected numbers separated by commas") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_POOL_SIZE:
        raise ValueError(f"bad pool sizes {text!r}: each must be 1 to {MAX_POOL_SIZE}")
    return sizes


def parse_concurrency(text: str) -> tuple[int, bool]:
    """``64`` (requests in flight) or ``2x`` (per worker): (number, per_worker).

    Raises ValueError unless the number is 1 to :data:`MAX_CONCURRENCY`.
    """
    per_worker = text.endswith("x")
    try:
        value = int(text.removesuffix("x"))
    except ValueError:
        raise ValueError(f"bad concurrency {text!r}: expected N or Nx (N per worker)") from None
    if not 1 <= value <= MAX_CONCURRENCY:
        raise ValueError(f"bad concurrency {text!r}: must be 1 to {MAX_CONCURRENCY}")
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
