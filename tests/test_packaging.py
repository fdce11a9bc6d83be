"""What `pip install minigrad` gives: the kernels as minigrad.kernels (so PyPI's `kernels`
package can live beside them), light core requirements with the rest in extras, and the iris
data file inside the package."""
import importlib.metadata
import importlib.resources
import os
import subprocess
import sys
import textwrap

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

NOT_IN_CORE = {"scikit-learn", "sklearn", "scipy", "torch"}
EXTRAS = {"cuda12", "cuda13", "mpi", "mpich", "dev", "torch"}

CHECK_BOTH = """
import sys
import numpy as np
{first}
{second}
assert kernels.MARK == "pypi-kernels", "the top-level kernels package was replaced"
assert sys.modules["kernels"] is kernels
assert minigrad.kernels.__name__ == "minigrad.kernels", minigrad.kernels.__name__
assert minigrad.kernels is not kernels
x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
y = minigrad.kernels.conv2d_forward(x, np.ones((1, 1, 2, 2), np.float32), backend="numpy")
assert y.shape == (1, 1, 2, 2) and y.ravel().tolist() == [8.0, 12.0, 20.0, 24.0], y
assert kernels.MARK == "pypi-kernels" and sys.modules["kernels"] is kernels
print("ok", kernels.__file__)
"""


@pytest.mark.parametrize("kernels_first", [True, False], ids=["kernels-first", "minigrad-first"])
def test_minigrad_kernels_and_a_top_level_kernels_package_coexist(tmp_path, kernels_first):
    """A stand-in for PyPI's `kernels` first on sys.path; the subprocess runs in tmp_path, so
    the repository's own top-level kernels/ folder is not on sys.path at all."""
    fake = tmp_path / "kernels"
    fake.mkdir()
    (fake / "__init__.py").write_text('MARK = "pypi-kernels"\n')
    imports = ["import kernels", "import minigrad.kernels"]
    if not kernels_first:
        imports.reverse()
    code = textwrap.dedent(CHECK_BOTH).format(first=imports[0], second=imports[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path),
                                                      env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["ok", str(fake / "__init__.py")], r.stdout


def _requirements():
    return [Requirement(r) for r in importlib.metadata.requires("minigrad") or []]


def test_core_requirements_leave_out_the_heavy_packages():
    core = {canonicalize_name(r.name) for r in _requirements()
            if r.marker is None or "extra" not in str(r.marker)}
    assert core, "no core requirements at all: is minigrad installed (pip install -e .)?"
    assert "numpy" in core
    heavy = core & {canonicalize_name(n) for n in NOT_IN_CORE}
    assert not heavy, f"core requirements include {sorted(heavy)}: make them extras"


def test_extras_are_declared():
    declared = set(importlib.metadata.metadata("minigrad").get_all("Provides-Extra") or [])
    assert EXTRAS <= declared, f"missing extras: {sorted(EXTRAS - declared)}"
    torch_reqs = [r for r in _requirements() if canonicalize_name(r.name) == "torch"]
    assert torch_reqs and all(r.marker is not None and r.marker.evaluate({"extra": "torch"})
                              for r in torch_reqs)


def test_iris_csv_is_package_data():
    iris = importlib.resources.files("minigrad.data").joinpath("iris.csv")
    assert iris.is_file(), f"{iris} is not packaged (tool.setuptools.package-data)"
    rows = [ln for ln in iris.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(rows) >= 150
