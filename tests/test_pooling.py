import numpy as np
import pytest

from bertnpu_runtime.pooling import l2_normalize, pool


@pytest.fixture
def hidden_and_mask():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    hidden[1, 2:] = 1e6  # padding rows must never leak into any pooling mode
    return hidden, mask


def test_mean_ignores_padding(hidden_and_mask):
    hidden, mask = hidden_and_mask
    pooled = pool(hidden, mask, "mean")
    np.testing.assert_allclose(pooled[0], hidden[0].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(pooled[1], hidden[1, :2].mean(axis=0), rtol=1e-6)
    assert pooled.dtype == np.float32


def test_max_ignores_padding(hidden_and_mask):
    hidden, mask = hidden_and_mask
    np.testing.assert_array_equal(pool(hidden, mask, "max")[1], hidden[1, :2].max(axis=0))


def test_cls_takes_first_token(hidden_and_mask):
    hidden, mask = hidden_and_mask
    np.testing.assert_array_equal(pool(hidden, mask, "cls"), hidden[:, 0])


def test_unknown_mode_is_rejected(hidden_and_mask):
    with pytest.raises(ValueError, match="unknown pooling mode 'sum'"):
        pool(*hidden_and_mask, "sum")


def test_l2_normalize_unit_rows_and_zero_rows_stay_zero():
    vectors = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = l2_normalize(vectors)
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])
