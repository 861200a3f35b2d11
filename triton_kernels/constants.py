"""Numbers both backends share, in a module that imports nothing (no triton, no torch): the torch backend takes them
from here on machines without triton, and the kernel package loads without specsampler's other modules."""

# A residual with at most this much mass is rounding noise (p equals q); the next token is then drawn from p.
RESIDUAL_EPS = 1e-6
# Temperatures below the smallest normal float32 make a row greedy (1 / T would overflow float32); both backends agree.
GREEDY_BELOW = 2.0**-126

BLOCK_K = 8  # positions decided per step of launch 2's loop over K (16 doubles its registers: a 16 x 64 combine)
BLOCK_S = 64  # the most statistics splits per row (S1 <= BLOCK_S)
