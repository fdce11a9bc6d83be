"""load_iris: shapes, dtypes, the common 80/20 split, standardisation on the train split."""

import numpy as np
import pytest

from minigrad.data import load_iris


@pytest.fixture(scope="module")
def iris():
    return load_iris()


def test_shapes_and_dtypes(iris):
    X_train, y_train, X_test, y_test = iris
    assert X_train.shape == (120, 4) and X_test.shape == (30, 4)
    assert y_train.shape == (120,) and y_test.shape == (30,)
    assert X_train.dtype == X_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert set(np.unique(np.concatenate([y_train, y_test]))) == {0, 1, 2}


def test_standardised_with_train_statistics_only(iris):
    X_train, _, X_test, _ = iris
    np.testing.assert_allclose(X_train.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(X_train.std(axis=0), 1.0, atol=1e-6)
    # the test split went through the train split's affine map, not its own
    from sklearn.datasets import load_iris as sk_load_iris
    from sklearn.model_selection import train_test_split

    X, y = sk_load_iris(return_X_y=True)
    raw_train, raw_test, _, _ = train_test_split(X, y, test_size=0.2, random_state=42)
    expected = (raw_test - raw_train.mean(0)) / raw_train.std(0)
    np.testing.assert_allclose(X_test, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(X_test.mean(axis=0), 0.0, atol=1e-3)


def test_split_is_the_common_seed_42_split(iris):
    from sklearn.datasets import load_iris as sk_load_iris
    from sklearn.model_selection import train_test_split

    X, y = sk_load_iris(return_X_y=True)
    _, _, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
    np.testing.assert_array_equal(iris[1], y_train)
    np.testing.assert_array_equal(iris[3], y_test)


def test_deterministic_and_seed_dependent(iris):
    again = load_iris()
    for a, b in zip(iris, again):
        np.testing.assert_array_equal(a, b)
    other = load_iris(seed=0)
    assert not np.array_equal(iris[1], other[1])
    assert load_iris(test_size=0.5)[0].shape == (75, 4)
