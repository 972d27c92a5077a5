"""Mask streams: AES-256-CTR keystreams read as little-endian uint64 words.

Each 32-byte seed keys one AES-256-CTR stream starting at counter zero; a seed is used for
one vector only (seeds are bound to pair, federation, round and cohort by HKDF), so the zero
IV never repeats under one key. Words are produced chunk by chunk into one preallocated buffer,
shared by all the streams of one call, and added into the target in place, so masking a
vector costs no per-element Python work and no memory beyond the vector itself and one chunk,
however many peers it is masked against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
CHUNK_WORDS = 1 << 16  # 512 KiB: the chunk of the target stays in cache across all streams
_ZEROS = bytes(CHUNK_WORDS * 8)
_BLOCK = 16


def new_buffer() -> bytearray:
    """Room for one chunk of words (update_into wants one extra block beyond the data)."""
    return bytearray(CHUNK_WORDS * 8 + _BLOCK - 1)


class MaskStream:
    """A deterministic stream of uint64 words from one seed (only the cipher's state: the
    words go into a buffer the caller shares between streams)."""

    def __init__(self, seed: bytes):
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a mask seed has {SEED_BYTES} bytes, got {len(seed)}")
        self._enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(bytes(_BLOCK))).encryptor()

    def next_words(self, n: int, buffer: bytearray | None = None) -> np.ndarray:
        """The next ``n`` words (n <= CHUNK_WORDS), as a view of ``buffer`` (from new_buffer(),
        overwritten by the next call that uses it; a fresh one when not given)."""
        if not 0 <= n <= CHUNK_WORDS:
            raise ValueError("request at most CHUNK_WORDS words at a time")
        buffer = new_buffer() if buffer is None else buffer
        self._enc.update_into(memoryview(_ZEROS)[: n * 8], buffer)
        return np.frombuffer(buffer, dtype="<u8", count=n)


def add_streams(target: np.ndarray, streams: Sequence[tuple[MaskStream, int]]) -> None:
    """``target += sum(sign * stream)`` modulo 2^64, in place; target is a 1-D uint64 vector.

    Each stream advances by ``target.size`` words. ``sign`` is +1 or -1.
    """
    if target.dtype != np.uint64 or target.ndim != 1:
        raise ValueError("target must be a 1-D uint64 vector")
    for _, sign in streams:
        if sign not in (1, -1):
            raise ValueError("stream signs are +1 or -1")
    buffer = new_buffer()
    for start in range(0, target.size, CHUNK_WORDS):
        part = target[start : start + CHUNK_WORDS]
        for stream, sign in streams:
            words = stream.next_words(part.size, buffer)
            # numpy's uint64 arithmetic wraps modulo 2^64, which is exactly Z_(2^64).
            if sign > 0:
                np.add(part, words, out=part)
            else:
                np.subtract(part, words, out=part)


def expand(seed: bytes, n: int) -> np.ndarray:
    """The first ``n`` words of the stream of ``seed`` as a new vector."""
    out = np.zeros(n, dtype=np.uint64)
    add_streams(out, [(MaskStream(seed), 1)])
    return out
