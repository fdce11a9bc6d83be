"""Test-wide settings: where MNIST lives, and skipping `gpu` tests where there is no GPU."""
import os
from pathlib import Path

import pytest

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"

# Tests never download: point the MNIST loader at the shared copy unless told otherwise.
if "MINIGRAD_DATA" not in os.environ and SHARED_MNIST.is_dir():
    os.environ["MINIGRAD_DATA"] = str(SHARED_MNIST)


def pytest_collection_modifyitems(config, items):
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    from minigrad.backend import gpu_available

    ok, why = gpu_available()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {why}")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
