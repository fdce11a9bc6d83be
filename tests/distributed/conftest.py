"""Fixtures for the distributed tests."""
import pytest
from dist_helpers import split


@pytest.fixture
def task():
    return split()
