"""The constants of GELU's formulas, for every kernel backend (and `cuda_source`'s C strings).

    gelu(x) = x Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2,  phi(x) = exp(-x^2/2) / sqrt(2 pi)
    tanh form (GPT-2):  gelu(x) ~ x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))

minigen's NumPy GELU (minigen/gelu.py) keeps its own copy on purpose: these kernels import
nothing of minigen (tests/test_backend.py checks it), and the parity tests hold both to the
same values.
"""

from __future__ import annotations

import math

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_CUBIC = 0.044715  # the cubic coefficient of the tanh form
