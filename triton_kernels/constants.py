"""Numbers both backends share, in a module that imports nothing (no triton, no torch): the torch backend takes them
from here on machines without triton, and the kernel package loads without specsampler's other modules."""

# A residual with at most this much mass is rounding noise (p equals q); the next token is then drawn from p.
RESIDUAL_EPS = 1e-6
# Temperatures below the smallest normal float32 make a row greedy (1 / T would overflow float32); both backends agree.
GREEDY_BELOW = 2.0**-126

BLOCK_K = 8  # positions decided per step of launch 2's loop over K (16 doubles its registers: a 16 x 64 combine)
BLOCK_S = 64  # the most statistics splits per row (S1 <= BLOCK_S)

# Random streams: each entry point draws from its own stream of a seed, so that a token drawn with
# `sample(..., seed=s)` and its verification with `verify(..., seed=s)` use independent numbers. The kernel keys
# Philox with seed XOR STREAM_KEYS[stream] (stream 0, verify and verify_probs: the seed itself); the torch backend
# seeds its generator with the same XOR for an int seed, and puts the stream in the counter of per-row seeds.
STREAM_VERIFY = 0  # verify, verify_probs
STREAM_SAMPLE = 1  # sample
STREAM_TREE = 2  # verify_tree
STREAM_KEYS = (0, 0x2545F4914F6CDD1D, 0x1D8E4E27C47D124F)  # < 2**62: an int seed's key stays in [2**62, 2**63)
