"""FarmHash Fingerprint64 of integers' decimal strings, in jax.numpy: Keras's Hashing (TensorFlow's
to_hash_bucket_fast) without TensorFlow, inside a compiled step.

64-bit words are (hi, lo) pairs of uint32 arrays, so it runs without jax_enable_x64. Only FarmHash's path for
strings of up to 16 bytes is here: every int32, and int64 values from -10**15 + 1 to 10**16 - 1.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["fingerprint_bins"]

_K0, _K2 = 0xC3A5C85C97CB3127, 0x9AE16A3B2F90404F
_U32 = jnp.uint32


def _word(value: int):
    return (_U32(value >> 32), _U32(value & 0xFFFFFFFF))


def _add(a, b):
    lo = a[1] + b[1]
    return (a[0] + b[0] + (lo < a[1]).astype(_U32), lo)


def _xor(a, b):
    return (a[0] ^ b[0], a[1] ^ b[1])


def _shift_right(a, n: int):
    if n >= 32:
        return (jnp.zeros_like(a[0]), a[0] >> (n - 32))
    return (a[0] >> n, (a[1] >> n) | (a[0] << (32 - n)))


def _shift_left(a, n: int):
    if n >= 32:
        return (a[1] << (n - 32), jnp.zeros_like(a[1]))
    return ((a[0] << n) | (a[1] >> (32 - n)), a[1] << n)


def _rotate(a, n: int):
    left = _shift_left(a, 64 - n)
    right = _shift_right(a, n)
    return (left[0] | right[0], left[1] | right[1])


def _multiply_high(x, y):
    """The high 32 bits of the 64-bit product of uint32 x and y (16-bit limbs, no overflow)."""
    x0, x1, y0, y1 = x & 0xFFFF, x >> 16, y & 0xFFFF, y >> 16
    p00, p01, p10 = x0 * y0, x0 * y1, x1 * y0
    middle = (p00 >> 16) + (p01 & 0xFFFF) + (p10 & 0xFFFF)
    return x1 * y1 + (p01 >> 16) + (p10 >> 16) + (middle >> 16)


def _multiply(a, b):
    """a * b modulo 2**64."""
    hi = _multiply_high(a[1], b[1]) + a[0] * b[1] + a[1] * b[0]
    return (hi, a[1] * b[1])


def _shift_mix(a):
    return _xor(a, _shift_right(a, 47))


def _hash_len_16(u, v, mul):
    a = _shift_mix(_multiply(_xor(u, v), mul))
    b = _shift_mix(_multiply(_xor(v, a), mul))
    return _multiply(b, mul)


def _decimal_bytes(x):
    """x (int32/int64) as its decimal string: bytes [..., 16] (zero padded) and lengths [...]."""
    wide = x.dtype.itemsize == 8
    negative = x < 0
    unsigned = jnp.uint64 if wide else _U32
    magnitude = jnp.where(negative, -(x + 1), x).astype(unsigned) + negative.astype(unsigned)   # |int32 min| fits
    powers = [10 ** i for i in range(20 if wide else 10)]
    digits = jnp.stack([(magnitude // p) % 10 for p in reversed(powers)], -1).astype(_U32)   # most significant first
    num_digits = jnp.maximum(1, sum((magnitude >= p).astype(jnp.int32) for p in powers[1:]) + 1)
    shift = negative.astype(jnp.int32)
    length = num_digits + shift
    position = jnp.arange(16)
    index = position - shift[..., None] + (len(powers) - num_digits)[..., None]   # which digit sits at `position`
    digit = jnp.take_along_axis(digits, jnp.clip(index, 0, len(powers) - 1), -1) + ord("0")
    chars = jnp.where(negative[..., None] & (position == 0), _U32(ord("-")), digit)
    return jnp.where(position < length[..., None], chars, _U32(0)), length


def _fetch(chars, start, size: int):
    """Little-endian word of `size` bytes (4 or 8) from `start` [...]: a (hi, lo) pair."""
    index = start[..., None] + jnp.arange(size)
    picked = jnp.take_along_axis(chars, jnp.clip(index, 0, chars.shape[-1] - 1), -1)
    lo = sum(picked[..., i] << (8 * i) for i in range(4))
    hi = sum(picked[..., i + 4] << (8 * i) for i in range(size - 4)) if size == 8 else jnp.zeros_like(lo)
    return (hi, lo)


def _fingerprint(chars, length):
    """FarmHash Fingerprint64 (farmhashna::Hash64) of strings of 1 to 16 bytes (`length` [...], int32)."""
    start, length = length, length.astype(_U32)
    mul = _add(_word(_K2), (jnp.zeros_like(length), length * 2))
    length_word = (jnp.zeros_like(length), length)
    # 8 to 16 bytes
    a = _add(_fetch(chars, jnp.zeros_like(start), 8), _word(_K2))
    b = _fetch(chars, start - 8, 8)
    long = _hash_len_16(_add(_multiply(_rotate(b, 37), mul), a), _multiply(_add(_rotate(a, 25), b), mul), mul)
    # 4 to 7 bytes
    first = _fetch(chars, jnp.zeros_like(start), 4)
    middle = _hash_len_16(_add(length_word, _shift_left(first, 3)), _fetch(chars, start - 4, 4), mul)
    # 1 to 3 bytes
    pick = lambda i: jnp.take_along_axis(chars, jnp.clip(i, 0, 15)[..., None], -1)[..., 0]   # noqa: E731
    y = (jnp.zeros_like(length), pick(jnp.zeros_like(start)) + (pick(start >> 1) << 8))
    z = (jnp.zeros_like(length), length + (pick(start - 1) << 2))
    short = _multiply(_shift_mix(_xor(_multiply(y, _word(_K2)), _multiply(z, _word(_K0)))), _word(_K2))
    choose = lambda cond, p, q: (jnp.where(cond, p[0], q[0]), jnp.where(cond, p[1], q[1]))   # noqa: E731
    return choose(length >= 8, long, choose(length >= 4, middle, short))


def _modulo(word, n: int):
    """The uint64 `word` modulo n (1 <= n < 2**31), a few bits at a time so that nothing overflows uint32."""
    bits = max(1, min(16, 32 - int(n).bit_length()))
    remainder = jnp.zeros_like(word[1])
    for position in range(64 - bits, -bits, -bits):
        start = max(position, 0)
        width = position + bits - start
        part = word[0] >> (start - 32) if start >= 32 else word[1] if start == 0 else _shift_right(word, start)[1]
        remainder = (remainder * (1 << width) + (part & ((1 << width) - 1))) % n
    return remainder


def fingerprint_bins(x, num_bins: int):
    """Keras's Hashing bins (int32, in [0, num_bins)) of integer array `x`: Fingerprint64(str(x)) % num_bins."""
    chars, length = _decimal_bytes(jnp.asarray(x))
    return _modulo(_fingerprint(chars, length), num_bins).astype(jnp.int32)
