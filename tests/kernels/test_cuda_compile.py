"""Every kernels/cuda/*.cu compiles with nvcc for sm_90 and exports the kernels the
launchers ask for. Skipped only where nvcc is absent. NVRTC (what cupy.RawModule uses) is
not available without the CUDA runtime, so its constraints are checked textually: the
sources are self-contained (no #include), which also keeps CuPy's source-keyed kernel cache
honest."""
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from minigrad.kernels.cuda import CU_FILES, _runtime

CUDA_DIR = _runtime.CUDA_DIR
NVCC_FLAGS = ("-arch=sm_90", "-cubin", "-std=c++14", "-Werror", "all-warnings")
SUFFIXES = ("f32_i32", "f32_i64", "f64_i32", "f64_i64")

# the extern "C" base names each launcher requests from each .cu file
EXPECTED = {
    "im2col": ("im2col", "col2im"),
    "im2row": ("im2row", "row2im"),
    "kn2row": ("kn2row_shift_add", "kn2row_shift_gather"),
    "kn2col": ("kn2col_shift_add", "kn2col_shift_gather"),
    "direct": ("direct_forward", "direct_backward_data", "direct_backward_filter"),
    "pool": ("maxpool_forward", "maxpool_backward"),
}


def test_every_cu_file_is_known():
    on_disk = sorted(p.stem for p in CUDA_DIR.glob("*.cu"))
    assert on_disk == sorted(CU_FILES) == sorted(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_source_is_self_contained_and_documented(stem):
    src = _runtime.source(stem)
    assert not re.search(r"^\s*#\s*include", src, re.M), "NVRTC sources must not #include"
    head = src.lstrip().splitlines()[:40]
    assert head[0].startswith(f"// {stem}.cu"), "file must open with a comment"
    assert any("Thread-to-data mapping" in line for line in head)
    code = re.sub(r"//[^\n]*", "", src)                  # comments may name them
    for banned in ("atomicAdd", "__syncthreads", "__shared__"):
        assert banned not in code, f"{banned}: kernels here are gathers with independent threads"


@pytest.fixture(scope="module")
def cubins(tmp_path_factory):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    out = tmp_path_factory.mktemp("cubin")

    def compile_one(stem):
        target = out / f"{stem}.cubin"
        cmd = [nvcc, *NVCC_FLAGS, "-o", str(target), str(CUDA_DIR / f"{stem}.cu")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        return stem, cmd, r, target

    with ThreadPoolExecutor(max_workers=3) as pool:
        return {stem: res for stem, *res in pool.map(compile_one, sorted(EXPECTED))}


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_nvcc_compiles(cubins, stem):
    cmd, r, target = cubins[stem]
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    assert r.stderr.strip() == "", r.stderr             # no warnings either
    blob = Path(target).read_bytes()
    for base in EXPECTED[stem]:
        for suffix in SUFFIXES:
            assert f"{base}_{suffix}".encode() + b"\0" in blob, f"{base}_{suffix} missing"
