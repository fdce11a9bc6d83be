"""Test-wide settings: where MNIST lives, skipping `mnist` tests where its files are missing,
and skipping `gpu` tests where there is no GPU.

tests/ itself is on sys.path (pytest puts this file's folder there), so tests import the
shared conv/pool oracle as `import oracle` (tests/oracle.py).
"""
import os
from pathlib import Path

import pytest

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
ENV_VAR = "MINIGRAD_DATA"  # minigrad.data.mnist.ENV_VAR

# Tests never download: point the MNIST loader at the shared copy unless told otherwise
# (an empty $MINIGRAD_DATA counts as unset, as it does for the loader).
if not os.environ.get(ENV_VAR) and SHARED_MNIST.is_dir():
    os.environ[ENV_VAR] = str(SHARED_MNIST)


def mnist_missing():
    """None when the four MNIST files are where the loader will look, else why not."""
    from minigrad.data.mnist import FILES

    root = os.environ.get(ENV_VAR)
    if not root:
        return (f"needs the MNIST files: ${ENV_VAR} is not set and {SHARED_MNIST} does not "
                f"exist; set ${ENV_VAR} to a folder holding {', '.join(FILES)}")
    missing = [name for name in FILES if not (Path(root).expanduser() / name).is_file()]
    if missing:
        return (f"needs the MNIST files: ${ENV_VAR}={root} lacks {', '.join(missing)} "
                "(tests never download)")
    return None


def _skip_marked(items, marker, why):
    marked = [item for item in items if item.get_closest_marker(marker)]
    if not marked:
        return
    reason = why()
    if reason:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


def _gpu_missing():
    from minigrad.backend import gpu_available

    ok, why = gpu_available()
    return None if ok else f"needs a CUDA GPU: {why}"


def pytest_collection_modifyitems(config, items):
    _skip_marked(items, "mnist", mnist_missing)
    _skip_marked(items, "gpu", _gpu_missing)
