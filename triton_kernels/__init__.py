"""Triton kernels of specsampler, installed as ``specsampler.triton_kernels``."""

from .verify import row_stats, verify_rows

__all__ = ["row_stats", "verify_rows"]
