"""Every differentiable op: backward() against central differences in float64."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigen.gradcheck import gradcheck
from tests.op_specs import SPECS


@pytest.mark.parametrize("spec", [s for s in SPECS if s.fd], ids=repr)
@settings(max_examples=15)
@given(data=st.data())
def test_backward_matches_central_differences(spec, data):
    arrays, kw = spec.draw(data)
    gradcheck(lambda *ts: spec.ours(*ts, **kw), *arrays, atol=1e-6, rtol=1e-5)
