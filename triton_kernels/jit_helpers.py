"""The @triton.jit helpers that more than one launch uses: named constants, a row's temperature, draft count and
Philox key, uniforms from Philox's bits, tiles of a row, scrubbed logits, and grid dependency control (programmatic
dependent launch).

Helpers are inlined where they are called: a split into named steps changes no generated instruction."""

from __future__ import annotations

import triton
import triton.language as tl

from .constants import GREEDY_BELOW, STREAM_KEYS

try:  # grid dependency control (programmatic dependent launch, sm_90+): Triton 3.3 and later
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - an older Triton: PDL stays off
    gdc_launch_dependents = gdc_wait = None

FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)
FLOAT32_MIN_NORMAL = tl.constexpr(GREEDY_BELOW)  # 2**-126: below it a temperature makes a row greedy
LOG2_E = tl.constexpr(1.4426950408889634)
INT32_MAX = tl.constexpr(2147483647)
INT64_MAX = tl.constexpr(9223372036854775807)
UNIFORM_SCALE = tl.constexpr(5.9604644775390625e-08)  # 2**-24: uniforms are multiples of it
RNG_GROUP = tl.constexpr(4)  # vocabulary ids per Philox call (its four 32-bit outputs)
STREAM_KEY_1 = tl.constexpr(STREAM_KEYS[1])  # the Philox key of stream s is the seed XOR STREAM_KEYS[s]
STREAM_KEY_2 = tl.constexpr(STREAM_KEYS[2])


@triton.jit
def _splat(flag, like):
    """A scalar condition as a tensor shaped like `like` (Triton's interpreter needs tensor masks)."""
    return (like * 0 + flag.to(tl.int32)) != 0


@triton.jit
def _scaled_temperature(temp_ptr, b, temperature, ROW_TEMP: tl.constexpr):
    """(T, log2(e) / T) for row b: exp((l - m) / T) = exp2((l - m) * scale). T below the smallest normal float32
    (1 / T would overflow; negative values too) reads as 0, greedy, as in the torch backend; scale = log2(e) there."""
    if ROW_TEMP:
        temp = tl.load(temp_ptr + b).to(tl.float32)
    else:
        temp = tl.cast(temperature, tl.float32)
    temp = tl.where(temp < FLOAT32_MIN_NORMAL, 0.0, temp)
    return temp, 1.0 / tl.where(temp == 0.0, 1.0, temp) * LOG2_E


@triton.jit
def _num_drafts(num_draft_ptr, b, K, RAGGED: tl.constexpr):
    """K_b, clamped to [0, K] so that no value of num_draft_tokens reads out of bounds."""
    if RAGGED:
        k_b = tl.minimum(tl.maximum(tl.load(num_draft_ptr + b).to(tl.int64), 0), K)
    else:
        k_b = tl.cast(K, tl.int64)
    return k_b


@triton.jit
def _philox_key(seed_ptr, b, seed, ROW_SEED: tl.constexpr, STREAM: tl.constexpr):
    """(key, row counter) of row b's Philox streams: with ROW_SEED its own seed of `seed_ptr` [B] int64 and 0 (a row's
    numbers do not depend on its place in the batch), else the call's `seed` and b. The key is the seed XOR
    STREAM_KEYS[STREAM] (``constants``: each entry point, verify, sample or verify_tree, its own stream of a seed;
    stream 0 the seed itself)."""
    if ROW_SEED:
        seed_b = tl.load(seed_ptr + b)
        row_key = b * 0
    else:
        seed_b = seed
        row_key = b
    if STREAM == 1:
        seed_b = seed_b ^ STREAM_KEY_1
    elif STREAM == 2:
        seed_b = seed_b ^ STREAM_KEY_2
    return seed_b, row_key


@triton.jit
def _to_uniform(bits, OPEN: tl.constexpr):
    """32 random bits -> float32 uniform in [0, 1), or in (0, 1) when OPEN; multiples of 2**-24."""
    u = (bits >> 8).to(tl.float32)
    if OPEN:
        u = u + 0.5
    return u * UNIFORM_SCALE


@triton.jit
def _finite_logits(x):
    """Logits as float32 with NaN -> -inf and +inf -> the largest float32."""
    x = x.to(tl.float32)
    return tl.minimum(tl.where(x == x, x, -float("inf")), FLOAT32_MAX)


@triton.jit
def _tile_range(tile_lo, tiles, n, MASKED: tl.constexpr, BLOCK_V: tl.constexpr):
    """The tiles of split [tile_lo, tile_lo + tiles) that are whole (MASKED=0) or the row's partial one (MASKED=1)."""
    if MASKED:
        return tl.maximum(tile_lo, n // BLOCK_V), tl.minimum(tile_lo + tiles, tl.cdiv(n, BLOCK_V))
    else:
        return tile_lo, tl.minimum(tile_lo + tiles, n // BLOCK_V)


@triton.jit
def _load_tile(row_ptr, stride_v, offs, n, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(row_ptr + offs * stride_v, mask=offs < n, other=-float("inf"))
    else:
        return tl.load(row_ptr + offs * stride_v)


@triton.jit
def _row_position(row, B, K):
    """(is_draft, b, t) of a row of launch 1's grid: target rows b*(K+1)+t, then draft rows B*(K+1) + b*K+t."""
    is_draft = row >= B * (K + 1)
    b = tl.where(is_draft, (row - B * (K + 1)) // tl.maximum(K, 1), row // (K + 1))
    t = tl.where(is_draft, (row - B * (K + 1)) % tl.maximum(K, 1), row % (K + 1))
    return is_draft, b, t
