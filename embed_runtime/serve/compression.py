"""Request bodies sent with ``Content-Encoding: gzip`` or ``deflate`` (tritonclient's
``request_compression_algorithm``), decompressed within the server's body limit.

A gzip body may hold several members (RFC 1952 2.2): each is decoded and their data joined, as ``gzip -d``
does. Anything after the last member, and a body that ends inside one, is refused; ``deflate`` (a zlib
stream, RFC 1950) is one stream with nothing after it. The limit holds across members, so a small body
cannot expand into more than ``limit`` bytes (no gzip bomb).
"""

from __future__ import annotations

import zlib

from embed_runtime.serve.protocol import PayloadTooLargeError, ProtocolError

WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""zlib ``wbits`` of each accepted request ``Content-Encoding``."""

MAX_MEMBERS = 1024
"""Most gzip members one body may hold (each costs a decoder; real clients send one)."""

_GZIP_MAGIC = b"\x1f\x8b"
_STEP = 1 << 16  # compressed bytes fed at a time: a member's leftover input is copied, so keep it small


def decompress(body: bytes | bytearray, encoding: str, limit: int) -> bytes:
    """The decompressed ``body`` (``encoding`` is a key of :data:`WBITS`).

    Raises :class:`~embed_runtime.serve.protocol.ProtocolError` for data that is not valid, is cut short, is
    followed by other bytes or has more than :data:`MAX_MEMBERS` members, and
    :class:`~embed_runtime.serve.protocol.PayloadTooLargeError` when it decompresses to more than ``limit``
    bytes.
    """
    view = memoryview(body)
    pieces: list[bytes] = []
    total = pos = 0
    for member in range(1, MAX_MEMBERS + 1):
        decoder = zlib.decompressobj(WBITS[encoding])
        while not decoder.eof:
            if pos >= len(view):
                raise ProtocolError(
                    f"request body ends in the middle of its {encoding} data (member {member})"
                )
            try:
                piece = decoder.decompress(view[pos : pos + _STEP], limit - total + 1)
            except zlib.error as exc:
                where = f" (member {member})" if member > 1 else ""
                raise ProtocolError(f"request body is not valid {encoding} data{where}: {exc}") from None
            pos += _STEP
            total += len(piece)
            if total > limit:
                raise PayloadTooLargeError(
                    f"request body decompresses to more than the limit of {limit} bytes"
                )
            pieces.append(piece)
        pos = min(pos, len(view)) - len(decoder.unused_data)
        if pos == len(view):
            return b"".join(pieces)
        if encoding != "gzip":
            raise ProtocolError(
                f"request body has {len(view) - pos} bytes after the end of its deflate (zlib) stream"
            )
        if view[pos : pos + 2] != _GZIP_MAGIC:
            raise ProtocolError(
                f"request body has {len(view) - pos} bytes after the end of gzip member {member} that are not "
                "another gzip member"
            )
    raise ProtocolError(f"request body has more than {MAX_MEMBERS} gzip members")
