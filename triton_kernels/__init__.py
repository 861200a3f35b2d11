"""Triton kernels of specsampler, installed as ``specsampler.triton_kernels``."""

from .verify import row_stats, verify_rows, warp_cuts

__all__ = ["row_stats", "verify_rows", "warp_cuts"]
