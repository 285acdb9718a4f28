"""prototype_intensity (Eq. 4) on a hand-worked 2-sample, 2x2, M=3 case."""

from __future__ import annotations

import numpy as np
import pytest

from i2x.core.errors import InvalidArgument
from i2x.core.intensity import prototype_intensity

ASSIGNMENTS = np.array([[[0, 1], [1, 2]],
                        [[2, 2], [2, 2]]], dtype=np.int16)
SALIENCY = np.array([[[0.5, 1.0], [2.0, 4.0]],
                     [[1.0, 2.0], [3.0, 4.0]]])
# sample 0: P0 = 0.5 ; P1 = 1.0 + 2.0 = 3.0 ; P2 = 4.0
# sample 1: every position is P2 -> P2 = 1 + 2 + 3 + 4 = 10, P0 = P1 = 0
EXPECTED = np.array([[0.5, 3.0, 4.0],
                     [0.0, 0.0, 10.0]])


def test_single_checkpoint_by_hand():
    out = prototype_intensity(SALIENCY, ASSIGNMENTS, 3)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, EXPECTED)


def test_stack_of_checkpoints_and_float16():
    # checkpoint 1 has every saliency doubled -> every intensity doubled; an unused 4th prototype stays 0
    stacked = np.stack([SALIENCY, 2 * SALIENCY]).astype(np.float16)
    out = prototype_intensity(stacked, ASSIGNMENTS, 4)
    assert out.shape == (2, 2, 4)
    np.testing.assert_allclose(out[0, :, :3], EXPECTED)
    np.testing.assert_allclose(out[1, :, :3], 2 * EXPECTED)
    assert not out[..., 3].any()


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(InvalidArgument, match=r"\(2, 2, 3\).*\(2, 2, 2\)"):
        prototype_intensity(np.zeros((2, 2, 3)), ASSIGNMENTS, 3)


@pytest.mark.parametrize("bad_id", [3, -1])
def test_assignment_out_of_range(bad_id):
    bad = ASSIGNMENTS.copy()
    bad[1, 0, 0] = bad_id
    with pytest.raises(InvalidArgument, match=r"\[0, 3\)") as err:
        prototype_intensity(SALIENCY, bad, 3)
    assert err.value.field == "assignments"


def test_nan_saliency_and_float_assignments():
    with pytest.raises(InvalidArgument, match="NaN"):
        prototype_intensity(np.full((2, 2, 2), np.nan), ASSIGNMENTS, 3)
    with pytest.raises(InvalidArgument, match="integer"):
        prototype_intensity(SALIENCY, ASSIGNMENTS.astype(float), 3)
