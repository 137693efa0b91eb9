"""pytest set-up shared by tests/ and lessons/.

- Lessons run in their fast mode under pytest (nbmake starts kernels that inherit
  this environment); `jupyter lab lessons/` runs them in full.
- Hypothesis: no deadlines (the machine is noisy), a fixed budget of examples.
"""

import os

os.environ.setdefault("MINIGEN_FAST", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "minigen",
        deadline=None,
        max_examples=30,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minigen"))
except ImportError:  # hypothesis is in the dev extra
    pass
