"""load_iris: shapes, dtypes, the common 80/20 split, standardisation on the train split."""

import numpy as np
import pytest

from minigrad.data import load_iris
from minigrad.data.iris import load_iris_table, split_indices

SEED42_PERM = np.concatenate(split_indices(150, 0.2, 42)[::-1])  # test rows, then train


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
    X, y = load_iris_table()
    raw_train, raw_test = X[SEED42_PERM[30:]], X[SEED42_PERM[:30]]
    expected = (raw_test - raw_train.mean(0)) / raw_train.std(0)
    np.testing.assert_allclose(X_test, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(X_test.mean(axis=0), 0.0, atol=1e-3)


def test_split_is_the_common_seed_42_split(iris):
    # the first ten test rows of train_test_split(range(150), test_size=0.2, random_state=42)
    np.testing.assert_array_equal(SEED42_PERM[:10], [73, 18, 118, 78, 76, 31, 64, 141, 68, 82])
    _, y = load_iris_table()
    np.testing.assert_array_equal(iris[1], y[SEED42_PERM[30:]])
    np.testing.assert_array_equal(iris[3], y[SEED42_PERM[:30]])


def test_split_matches_scikit_learn_where_installed(iris):
    sklearn = pytest.importorskip("sklearn.model_selection")
    X, y = load_iris_table()
    for seed, size in ((42, 0.2), (0, 0.5), (7, 0.33)):
        _, _, y_train, y_test = sklearn.train_test_split(X, y, test_size=size,
                                                         random_state=seed)
        got = load_iris(seed=seed, test_size=size)
        np.testing.assert_array_equal(got[1], y_train)
        np.testing.assert_array_equal(got[3], y_test)


def test_table_is_fishers_iris():
    X, y = load_iris_table()
    assert X.shape == (150, 4) and np.bincount(y).tolist() == [50, 50, 50]
    np.testing.assert_allclose(X[0], [5.1, 3.5, 1.4, 0.2])      # the first setosa
    np.testing.assert_allclose(X.mean(0), [5.8433, 3.0573, 3.758, 1.1993], atol=1e-4)


def test_deterministic_and_seed_dependent(iris):
    again = load_iris()
    for a, b in zip(iris, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = load_iris(seed=0)
    assert not np.array_equal(iris[1], other[1])
    assert load_iris(test_size=0.5)[0].shape == (75, 4)
