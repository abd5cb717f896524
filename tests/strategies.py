"""Hypothesis strategies for splat parameters."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@st.composite
def valid_params(draw, max_splats: int = 200) -> np.ndarray:
    """float16 [N, 8] with finite values and l11, l22 > 0 (what a fitter may produce)."""
    n = draw(st.integers(0, max_splats))
    finite = st.floats(-4, 4, width=16, allow_nan=False, allow_infinity=False)
    positive = st.floats(0.0009765625, 2, width=16)
    params = draw(hnp.arrays(np.float16, (n, 8), elements=finite))
    params[:, 2] = draw(hnp.arrays(np.float16, n, elements=positive))
    params[:, 4] = draw(hnp.arrays(np.float16, n, elements=positive))
    return params


any_bits = hnp.arrays(np.uint16, st.tuples(st.integers(0, 64), st.just(8)))
