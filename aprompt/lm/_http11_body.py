"""A reply body of :mod:`aprompt.lm._http11`, taken in pieces as they arrive: decoded when the server
encoded it (gzip, deflate), cut at the caller's cap."""

from __future__ import annotations

import zlib

from aprompt.lm._transport import TransportError, UnreadableBody

__all__ = ["ReplyBody"]


class ReplyBody:
    """A reply body taken in pieces: decoded when the server encoded it, cut at the cap."""

    __slots__ = ("_cap", "_coded", "_decoder", "_pieces", "_size", "too_large")

    def __init__(self, cap: int, encoding: bytes) -> None:
        self._cap = cap
        self._pieces: list[bytes] = []
        self._size = 0
        self._coded = False  # any encoded byte taken (an empty body needs no decoding)
        self.too_large = False
        if encoding in (b"", b"identity"):
            self._decoder = None
        elif encoding in (b"gzip", b"x-gzip"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == b"deflate":
            self._decoder = zlib.decompressobj()
        else:
            raise UnreadableBody(f"unsupported content-encoding {encoding[:40]!r}")

    def add(self, data: bytes) -> bool:
        """Take ``data``; False once the body is longer than the cap (the rest need not be read)."""
        room = self._cap - self._size
        if self._decoder is not None:
            self._coded = self._coded or bool(data)
            try:
                data = self._decoder.decompress(data, room + 1)
            except zlib.error as exc:
                raise TransportError(f"the reply's body cannot be decoded: {exc}") from None
        if len(data) > room:
            self._pieces.append(data[:room])
            self._size = self._cap
            self.too_large = True
            return False
        self._pieces.append(data)
        self._size += len(data)
        return True

    def content(self) -> bytes:
        """The body; raises TransportError when its compressed stream is cut short or runs past its end
        (a gzip member after the first, or other bytes), which would leave part of it undecoded."""
        decoder = self._decoder
        if decoder is not None and self._coded and not self.too_large:
            if not decoder.eof:
                raise TransportError("the reply's compressed body is cut short")
            if decoder.unused_data:
                raise TransportError("the reply's body runs on past its compressed stream")
        return self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
