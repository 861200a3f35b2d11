"""What the plugin's modules share: the settings the replacement ``forward`` reads on every call, and the logger for
its warnings (a module of its own, so that ``patch`` and ``sampler`` import it rather than each other)."""

from __future__ import annotations

import logging

__all__ = ["STATE", "log"]

STATE = {"method": "token", "backend": "auto"}  # set by patch.install, read by sampler.forward
log = logging.getLogger("specsampler.vllm")
