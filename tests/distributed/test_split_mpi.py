"""Model parallelism and tensor slicing across MPI processes: the same checks as the thread
tests (test_model_parallel.py, test_tensor_slicing.py), one rank per process. Run with

    mpiexec -n 2 python -m pytest -q -p no:cacheprovider --with-mpi -m mpi \
        tests/distributed/test_split_mpi.py
    mpiexec -n 3 ...   (the same)

Without --with-mpi, pytest-mpi skips these tests. mpi4py is imported inside the tests only.
Every process builds the same problem from the same seed; no data is shared but through
the communicator under test.
"""
import numpy as np
import pytest
from test_model_parallel import (
    GRID,
    assert_same_model,
    check_model_parallel_step,
    check_split_conv,
    conv_problem,
    fake_mnist,
    single_worker_run,
    step_problem,
)
from test_tensor_slicing import (
    band_choices,
    check_sliced_conv,
    check_tensor_sliced_step,
    has_empty_output_band,
)

from minigrad.data.transforms import mnist_normalize
from minigrad.distributed.common import flat_params, replica
from minigrad.distributed.model_parallel import split_sizes, train_model_parallel
from minigrad.distributed.tensor_slicing import train_tensor_slicing
from minigrad.models import LeNet5, MnistCNN
from minigrad.random import manual_seed

pytestmark = pytest.mark.mpi


@pytest.fixture
def comm():
    from minigrad.distributed.comm_mpi import MPIComm

    c = MPIComm()
    yield c
    c.flush()
    c.barrier()


@pytest.mark.parametrize("h,stride,padding", GRID)
def test_split_conv_matches_torch_over_mpi(comm, h, stride, padding):
    p = conv_problem(h, stride, padding)
    lo, hi = check_split_conv(comm, p)
    sizes = split_sizes(5, comm.size)
    assert (lo, hi) == (sum(sizes[:comm.rank]), sum(sizes[:comm.rank + 1]))


@pytest.mark.parametrize("h,stride,padding", GRID)
def test_sliced_conv_matches_torch_over_mpi(comm, h, stride, padding):
    p = conv_problem(h, stride, padding)
    for bands in band_choices(p, comm.size).values():
        if has_empty_output_band(p, bands):  # refused alike on every rank
            with pytest.raises(ValueError, match="own no output row"):
                check_sliced_conv(comm, p, bands)
            continue
        check_sliced_conv(comm, p, bands)


@pytest.mark.parametrize("model_cls", [MnistCNN, LeNet5])
def test_model_parallel_step_over_mpi(comm, model_cls):
    check_model_parallel_step(comm, step_problem(model_cls))


@pytest.mark.parametrize("model_cls", [MnistCNN, LeNet5])
def test_tensor_sliced_step_over_mpi(comm, model_cls):
    check_tensor_sliced_step(comm, step_problem(model_cls))


@pytest.mark.parametrize("train_fn", [train_model_parallel, train_tensor_slicing])
def test_training_over_mpi_equals_single_worker(comm, train_fn):
    train, test = fake_mnist(192), fake_mnist(64, seed=1)
    manual_seed(0)
    model = MnistCNN()
    ref = replica(model)
    s = train_fn(model, train, test, comm="mpi", epochs=1, batch_size=32, lr=0.05,
                 optimizer="sgd", momentum=0.9, transform=mnist_normalize)
    single_worker_run(ref, train, test, epochs=1, batch_size=32, lr=0.05)
    assert_same_model(model, ref, f"rank {comm.rank}", rtol=1e-3, atol=1e-5)
    mine = flat_params(model.parameters())
    for other in comm.allgather(mine):  # every rank ends with the same whole model
        np.testing.assert_array_equal(other, mine)
    if comm.rank != 0:
        assert s is None
        return
    assert s["workers"] == comm.size and s["steps"] == 192 // 32
    assert s["bytes_per_step"] > 0 and s["param_bytes_per_worker"] > 0
    assert len(s["per_rank"]["activation_bytes"]) == comm.size
