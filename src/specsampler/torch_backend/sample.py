"""Random numbers and draws of the torch backend: seeds hashed to streams, the uniforms of an entry point's stream, and
one token drawn from an unnormalised distribution (batched, or one CPU row by the inverse CDF in chunks).

The uniforms come from the entry point's own stream of the seed (:func:`draw_uniforms`): a draw (`sample`), a
verification and a tree verification on one seed use independent numbers. When the caller supplies exponential noise
E (the test hook that makes the backend replay the kernel's random numbers), a draw is argmax r(x)/E_x instead of the
inverse CDF: the kernel's exponential race.
"""

from __future__ import annotations

import numpy as np
import torch

from ..triton_kernels.constants import STREAM_KEYS, STREAM_VERIFY

_MASK64 = (1 << 64) - 1


def _signed64(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed64(0x9E3779B97F4A7C15)
_MIX1 = _signed64(0xBF58476D1CE4E5B9)
_MIX2 = _signed64(0x94D049BB133111EB)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of an int64 tensor."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def hash_seed(seed: int) -> int:
    """Any Python int -> [0, 2**62): splitmix64 over its 64-bit limbs, then its sign, so that distinct seeds (2**62
    apart, or beyond 64 bits) give independent streams."""
    h, n = 0, abs(seed)
    while True:
        h = _splitmix64(h ^ (n & _MASK64))
        n >>= 64
        if not n:
            break
    return _splitmix64(h ^ (seed < 0)) >> 2


def _splitmix64(z: int) -> int:
    """splitmix64's finaliser on one Python int (the constants of :func:`_mix`, unsigned)."""
    z = (z + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * (_MIX1 & _MASK64)) & _MASK64
    z = ((z ^ (z >> 27)) * (_MIX2 & _MASK64)) & _MASK64
    return z ^ (z >> 31)


def draw_uniforms(seed: int | torch.Tensor, batch: int, count: int, device: torch.device,
                  stream: int = STREAM_VERIFY) -> torch.Tensor:
    """The backend's uniforms: from a generator seeded with an int seed, or counter-based from per-row seeds.

    Parameters
    ----------
    seed : int or torch.Tensor
        One seed for the batch (a torch.Generator on `device`), or a [B] int64 tensor of per-row seeds, hashed with
        the position (splitmix64) so that a row's numbers do not depend on where it sits in the batch.
    batch, count : int
        B and the number of uniforms per row.
    device : torch.device
    stream : int
        The entry point's stream (``constants.STREAM_*``): an int seed's generator is seeded with seed XOR
        ``STREAM_KEYS[stream]``, per-row seeds count positions from ``stream * 2**32``; the same seed gives
        independent numbers in each stream (stream 0, verify's: the seed as it is).

    Returns
    -------
    torch.Tensor
        [B, count] float32 in [0, 1), multiples of 2**-24.
    """
    if not isinstance(seed, torch.Tensor):
        generator = torch.Generator(device=device)
        generator.manual_seed(seed ^ STREAM_KEYS[stream])
        return torch.rand(batch, count, generator=generator, device=device)
    pos = torch.arange(stream << 32, (stream << 32) + count, device=device, dtype=torch.int64)
    bits = _mix(_mix(seed.to(device=device, dtype=torch.int64))[:, None] ^ pos[None, :])
    return _shr(bits, 40).to(torch.float32) * (2.0**-24)



def draw(dist: torch.Tensor, uniform: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """One id per row of the unnormalised non-negative `dist` [B, V] with `uniform` [B]: the race with `noise`, else
    the inverse CDF."""
    if noise is not None:
        return (dist / noise).argmax(dim=-1)
    cdf = dist.cumsum(dim=-1)
    # u < 1 in float32, so u * total rounds below total (in float32) and the id found has positive mass:
    # cdf[id] > u * total >= cdf[id - 1]. The clamp only matters for a row with no mass at all.
    value = cdf[..., -1:] * uniform[:, None]
    return torch.searchsorted(cdf, value, right=True)[..., 0].clamp_(max=dist.shape[-1] - 1)



# The inverse CDF of one row walks the vocabulary in chunks: the chunk sums in one matrix-vector product, a cumulative
# sum over them to find the chunk, then one over that chunk alone (a cumulative sum over all of V is sequential and
# several times slower on CPUs).
_CHUNK = 256
_ONES = np.ones(_CHUNK, dtype=np.float32)


def draw_row(dist: torch.Tensor, uniform: float, noise: torch.Tensor | None) -> tuple[int, float]:
    """Draw one id from the unnormalised non-negative CPU row `dist` [V] float32 with one uniform in [0, 1).

    The race argmax dist / noise instead when `noise` [V] is given (the test hook). Returns (id, total mass); a row of
    no mass gives a uniform id; a row holding NaN gives a NaN total (and a meaningless id).
    """
    values = dist.numpy()
    vocab = values.shape[0]
    full = vocab - vocab % _CHUNK
    cum = (values[:full].reshape(-1, _CHUNK) @ _ONES).cumsum(dtype=np.float64)
    head = float(cum[-1]) if full else 0.0
    total = head + float(values[full:].sum(dtype=np.float64)) if full < vocab else head
    if noise is not None:
        return int(((dist if total != 0.0 else torch.ones(vocab)) / noise).argmax()), total
    if not total > 0.0:  # no mass (uniform), or NaN
        return min(int(uniform * vocab), vocab - 1), total
    # u < 1, so u * total < total: the chunk found has mass, and so has the id found in it, which satisfies
    # cum(id) > u * total >= cum(id - 1) up to the float32 rounding of the chunk sums.
    value = uniform * total
    chunk = int(cum.searchsorted(value, side="right")) if value < head else full // _CHUNK
    lo = chunk * _CHUNK
    inner = values[lo : lo + _CHUNK].cumsum(dtype=np.float64)
    i = int(inner.searchsorted(value - (float(cum[chunk - 1]) if chunk else 0.0), side="right"))
    if i == inner.shape[0]:  # rounding at the chunk's end: its last id with mass
        i = int(np.flatnonzero(values[lo : lo + _CHUNK])[-1])
    return lo + i, total
