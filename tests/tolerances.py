"""Tolerances, stated once per dtype and never loosened to make a test pass."""

FLOAT32 = dict(rtol=1e-5, atol=1e-5)
# bfloat16 inputs, float32 states and accumulation: two forms may differ by a bfloat16
# rounding of the result (relative step 2**-8).
BFLOAT16 = dict(rtol=1e-2, atol=1e-2)
