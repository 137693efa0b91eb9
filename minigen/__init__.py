"""minigen: Chapter 7 ("Synthesis") of The Little Book of Deep Learning, from scratch in NumPy.

from minigen import Tensor, no_grad
import minigen.functional as F
"""

from minigen import backend, checkpoint, functional, nn, optim
from minigen.ops import abs, exp, log, maximum, minimum, sqrt, tanh, where
from minigen.rng import manual_seed
from minigen.shape_ops import concatenate, split, stack
from minigen.tensor import (  # settings.py's switches, re-exported as tensor.py does: deliberate
    Tensor,
    default_dtype,
    enable_grad,
    get_default_dtype,
    is_grad_enabled,
    no_grad,
    set_default_dtype,
    tensor,
)

__version__ = "0.1.0"

# the re-exported names, listed again as the modules list them: deliberate
__all__ = [
    "Tensor",
    "tensor",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "get_default_dtype",
    "set_default_dtype",
    "default_dtype",
    "manual_seed",
    "backend",
    "functional",
    "nn",
    "optim",
    "checkpoint",
    "where",
    "maximum",
    "minimum",
    "exp",
    "log",
    "sqrt",
    "tanh",
    "abs",
    "concatenate",
    "stack",
    "split",
]
