"""Launch machinery shared by the three launches: the launch-configuration table, the compiled-launcher cache, the
per-stream workspace, programmatic dependent launch (PDL), and the reset of all of it.

Host side: tile widths and splits per (launch, B, V, dtype, device) come from an H200 sweep (:func:`launch_config`);
launches are guarded to the tensors' device, and after a specialisation's first launch through Triton, go straight to
its compiled launcher (:func:`launch`), which gets the tensors' addresses as ints (no data_ptr() call and no driver
query per pointer). Autotuning is not used: it times each candidate by running it, and launch 2's workspace atomics
and launch 1's -1 fill must run exactly once per call; the table is measured once, offline (bench/sweep_config.py).

Programmatic dependent launch (sm_90+): launch 2 starts while the launch before it (launch 1, or the cut launch) runs,
reads the call's inputs (the drafts, the scores at them) and then waits (griddepcontrol.wait) for that launch's
results; launch 1 and the cut launch let it start at once (griddepcontrol.launch_dependents). It overlaps launch 2's
start and its first dependent loads with the launch before. Off until a GPU run has timed it and run the tests with
it (bench/device_check.sh times both): SPECSAMPLER_PDL=1, or :data:`PDL` set to True.

Process-wide state (this module owns all of it; :func:`reset` empties it, tests reach it through
``specsampler._testing``):
- ``_COMPILED``: compiled launchers by specialisation key (:func:`launch_key`), least recently used first; at most
  :data:`MAX_COMPILED` entries (each a reference to a kernel Triton keeps loaded anyway; an evicted one is found again
  through Triton's own cache on its next launch, at its host cost once).
- ``_WORKSPACES``: one zeroed [rows, 3] int64 workspace per (device, stream) launch 2 ran on, 24 bytes a row, grown by
  doubling (at least 64 rows); token verification uses a row per batch row, block verification K + 1 (a slot per
  position). ``_OUTGROWN`` keeps the outgrown ones alive (a CUDA graph captured earlier may still point at one).
  Bound: per (device, stream), the sizes double, so all of them together hold at most 4 x 24 bytes a row of the
  largest B (B*(K+1) in block mode) seen (2.4 MB at 25,000 rows); as many entries as streams used. :func:`reset`
  drops them: call it only when no captured graph that verified through them will be replayed.
- caches of the launch configuration (:func:`launch_config`, 1024 shapes), each device's compute capability and SMs
  (one entry per device).
- :data:`PDL` and :data:`FAST_LAUNCH`: switches read at every launch.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections import OrderedDict

import torch
import triton

from .constants import BLOCK_S
from .jit_helpers import gdc_wait

# The current stream's handle without building a torch.cuda.Stream (Triton's own launcher reads it the same way).
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None) or (
    lambda index: torch.cuda.current_stream(index).cuda_stream)

# ------------------------------------------------------------------------------------------------- workspaces
_WORKSPACES: dict[tuple, torch.Tensor] = {}
# Outgrown workspaces are kept, never freed: a CUDA graph captured earlier still points at one, and a replay must not
# work on memory handed to someone else (24 bytes a row, and each growth at least doubles).
_OUTGROWN: list[torch.Tensor] = []


def workspace(device: torch.device, batch: int) -> torch.Tensor:
    """Zeroed per-(device, stream) workspace of at least `batch` rows (B, or B*(K+1) for block verification) that
    every launch leaves zeroed; grown (never freed) when a call needs more rows."""
    if device.type == "cuda":
        stream = _raw_stream(device.index if device.index is not None else torch.cuda.current_device())
    else:
        stream = 0
    key = (device.type, device.index, stream)
    ws = _WORKSPACES.get(key)
    if ws is None or ws.shape[0] < batch:
        if ws is not None:
            _OUTGROWN.append(ws)
        ws = torch.zeros(max(batch, 64, 2 * (ws.shape[0] if ws is not None else 0)), 3, dtype=torch.int64,
                         device=device)
        _WORKSPACES[key] = ws
    return ws


# ------------------------------------------------------------------------------------------------- PDL
PDL = os.environ.get("SPECSAMPLER_PDL", "0") == "1"


@functools.cache
def _capability(index: int | None) -> tuple:
    return torch.cuda.get_device_capability(index)


def use_pdl(device: torch.device, pdl: bool | None = None) -> bool:
    """Whether the launches of a call on `device` use programmatic dependent launch (`pdl`: force it, for offline
    compilation): CUDA, compute capability 9.0 or later, a Triton with grid dependency control, and PDL set."""
    if pdl is not None:
        return pdl
    return PDL and device.type == "cuda" and gdc_wait is not None and _capability(device.index)[0] >= 9


# ------------------------------------------------------------------------------------------------- configuration
@functools.cache
def _multiprocessors(device_type: str, index: int | None) -> int:
    """SMs of a CUDA device (asked once); 1 for a CPU under the interpreter."""
    return torch.cuda.get_device_properties(index).multi_processor_count if device_type == "cuda" else 1


# Launch configuration, from the full H200 sweep (bench/sweep_config.py; bench/results/gpu-2026-11-26-run3, each
# launch alone as a CUDA graph, K = 4, V = 128256):
# - launch 1 in 4 KB tiles (2048 ids of 16 bits, 1024 of 32: 8 per thread) with 8 programs of 8 warps per SM; below one
#   row per SM (B = 1) 1024-wide tiles and 4 programs per SM. B = 64: bf16 52 us (1024-wide: 76), fp32 72 us
#   (2048-wide: 84); B = 256: bf16 188, fp32 274 (2048-wide: 290); B = 1: 3.0 us (2048-wide: 3.6).
# - launch 2's race in 2048-wide tiles with 2 programs per SM for 16-bit scores, 512-wide with 8 per SM for fp32.
#   B = 64: bf16 52 us (1024 x 4: 57), fp32 57 (1024 x 4: 76); B = 256: bf16 157 (1024 x 4: 198), fp32 185 (237).
#   B = 1: 8.2-8.7 us whatever the tiles (a chain of dependent loads and atomics, not the race).
GPU_BLOCK_V_STATS = 2048  # for 16-bit scores (4 KB); 32-bit ones use half
GPU_BLOCK_V_RACE = 2048  # for 16-bit scores; 32-bit ones use 512
CPU_BLOCK_V = 8192  # the interpreter: few wide tiles (every tile costs Python calls)
CPU_PROGRAMS = 4  # the interpreter: about this many programs per launch


def gpu_block_v(launch: str, itemsize: int, rows: int, sms: int) -> int:
    """The tile width of launch "stats" or "race" on a GPU, for `rows` rows of scores of `itemsize` bytes."""
    if launch == "stats":
        return min(GPU_BLOCK_V_STATS * 2 // itemsize, 1024 if rows < sms else 1 << 20)
    return GPU_BLOCK_V_RACE if itemsize <= 2 else 512


@functools.lru_cache(maxsize=1024)
def launch_config(launch: str, device_type: str, index: int | None, rows: int, vocab: int, itemsize: int,
                  block_v: int | None, num_splits: int | None) -> tuple[int, int, int, int]:
    """(BLOCK_V, splits, tiles per split, num_warps) of launch "stats", "race" or "block-race" (launch 2 with block
    verification and no log-probabilities) over `rows` rows of `vocab` scores of `itemsize` bytes, computed once per
    shape; `block_v` / `num_splits` override the tile width and the splits.

    "block-race" is "race" at 16 warps where "race" has 8: block verification's programs hold the K + 1 positions'
    vectors across the race, and ptxas kept 8-warp ones at 128 registers (two CTAs an SM) with a few spills; 16-warp
    ones take 104-118 registers and none, still 16 warps an SM (bench/results/compile_offline_warps_triton*.txt).
    With log-probabilities 16 warps spill: those stay at 8 ("race").

    On a CPU (the interpreter) tiles are 8192 wide and there are about 4 programs in all. No rows (B = 0) gives one
    split: the launchers launch nothing then."""
    on_gpu = device_type == "cuda"
    sms = _multiprocessors(device_type, index)
    if launch == "stats":
        per_sm, max_splits = (8 if rows >= sms else 4), BLOCK_S
    else:
        per_sm, max_splits = (2 if itemsize <= 2 else 8), 1 << 16
    if block_v is None:
        block_v = gpu_block_v(launch, itemsize, rows, sms) if on_gpu else CPU_BLOCK_V
    tiles = triton.cdiv(vocab, block_v)
    if num_splits is None:
        num_splits = triton.cdiv(per_sm * sms if on_gpu else CPU_PROGRAMS, max(rows, 1))
    num_splits = max(1, min(num_splits, tiles, max_splits))
    tiles_per_split = triton.cdiv(tiles, num_splits)
    num_warps = 8 if block_v >= 2048 else 4
    if launch == "block-race" and num_warps == 8:
        num_warps = 16
    return block_v, triton.cdiv(tiles, tiles_per_split), tiles_per_split, num_warps


# ------------------------------------------------------------------------------------------------- launching
# Triton's JITFunction.run re-derives the specialisation of every argument and compares every global the kernel
# reads, on each call: 25-45 us of host time per launch on the H200 machine (bench/results/gpu-2026-11-26-run1).
# After the first launch of a specialisation through it, later ones go straight to its compiled launcher
# (``CompiledKernel[grid]``: the call JITFunction.run ends with, launch hooks included), found by :func:`launch_key`.
# Not under the interpreter.
FAST_LAUNCH = True
MAX_COMPILED = 256  # compiled launchers kept (least recently used evicted)
_COMPILED: OrderedDict[tuple, object] = OrderedDict()


@functools.cache
def _unspecialised(kernel) -> tuple[bool, ...]:
    """Per parameter of `kernel` (JITFunction, or the interpreter's stand-in): whether it is in do_not_specialize."""
    names = getattr(kernel, "do_not_specialize", None)
    if names is None:
        names = getattr(kernel, "kwargs", {}).get("do_not_specialize") or ()
    return tuple(name in names or i in names for i, name in enumerate(inspect.signature(kernel.fn).parameters))


def launch_key(kernel, device: torch.device, args: tuple, constexprs: dict, options: dict) -> tuple:
    """The key of the compiled specialisation a launch of `kernel` with positional `args` selects: everything Triton
    specialises on and a call can change. Every pointer argument's dtype and 16-byte alignment (inputs, outputs,
    workspaces and the dummies that stand for absent tensors alike); of every int its type (int32, int64, uint64)
    and, unless it is in do_not_specialize, whether it is 1 and whether it is a multiple of 16; the type of every other
    scalar; the constexprs and compile options (warps, PDL), and the device (each compiled kernel is loaded on one)."""
    return _key_and_addresses(kernel, device, args, constexprs, options)[0]


def _key_and_addresses(kernel, device: torch.device, args: tuple, constexprs: dict, options: dict):
    """:func:`launch_key`, and `args` with each tensor replaced by its address, in one pass (this runs on every launch:
    each tensor's address is asked once, and the ints are classed inline)."""
    key = [kernel, device.type, device.index, *constexprs.values(), *options.values()]
    addresses = list(args)
    for i, (arg, fixed) in enumerate(zip(args, _unspecialised(kernel), strict=False)):  # (constexprs: by name)
        kind = type(arg)
        if kind is int:
            width = 0 if -2147483648 <= arg < 2147483648 else (1 if arg < 9223372036854775808 else 2)
            key.append(width if fixed else width + 3 * (arg == 1) + 6 * (arg % 16 == 0))
        elif isinstance(arg, torch.Tensor):
            address = arg.data_ptr()
            addresses[i] = address
            key += (arg.dtype, address % 16 == 0)
        else:
            key.append(kind)
    return tuple(key), addresses


def launch(kernel, grid, args: tuple, constexprs: dict, num_warps: int, device: torch.device,
           launch_pdl: bool = False) -> None:
    """kernel[grid](*args, **constexprs) on the tensors' device (Triton launches on the current one: a guard makes
    it theirs), through the compiled launcher of its specialisation once there is one; `launch_pdl`: as a
    programmatic dependent launch (a compile option: the compiled launcher keeps it, and the key tells it apart)."""
    options = dict(num_warps=num_warps, launch_pdl=True) if launch_pdl else dict(num_warps=num_warps)
    if device.type != "cuda":
        kernel[grid](*args, **constexprs, **options)
    elif torch.cuda.current_device() != device.index:
        with torch.cuda.device(device.index):
            _launch_on_current(kernel, grid, args, constexprs, options, device)
    else:
        _launch_on_current(kernel, grid, args, constexprs, options, device)


def _launch_on_current(kernel, grid, args: tuple, constexprs: dict, options: dict, device: torch.device) -> None:
    """The compiled launcher gets the tensors' addresses as ints: given a tensor, it calls ``data_ptr()`` and asks
    the driver (``cuPointerGetAttribute``) whether the address is a device one, for each of the 10-14 pointers, on
    every launch; the API has checked every tensor's device already."""
    if FAST_LAUNCH:
        key, addresses = _key_and_addresses(kernel, device, args, constexprs, options)
        compiled = _COMPILED.get(key)
        if compiled is not None:
            _COMPILED.move_to_end(key)
            compiled[(grid[0], grid[1], 1)](*addresses, *constexprs.values(), stream=_raw_stream(device.index))
            return
    compiled = kernel[grid](*args, **constexprs, **options)
    if FAST_LAUNCH:
        _COMPILED[key] = compiled
        if len(_COMPILED) > MAX_COMPILED:
            _COMPILED.popitem(last=False)


def reset() -> None:
    """Empty every process-wide cache of the kernels: compiled launchers, workspaces (only when no captured CUDA graph
    that used them will be replayed), the launch configurations, and what was asked of the devices."""
    _COMPILED.clear()
    _WORKSPACES.clear()
    _OUTGROWN.clear()
    launch_config.cache_clear()
    _capability.cache_clear()
    _multiprocessors.cache_clear()
