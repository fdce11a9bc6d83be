"""Tensor slicing (minigrad.distributed.tensor_slicing) on threads.

A band-split conv layer must give each worker its rows of PyTorch's output and of dX, and,
after the dW allreduce, the whole dW and db, for N = 1, 2, 3, odd and even heights,
strides 1-2, paddings 0-2, with planned bands and with plain even bands of the input
(any boundaries work under the window-centre rule). A band-split MNIST CNN and LeNet-5
must take the same SGD steps as one worker, and a training run must count its halo bytes
as the module docstring says.

The `check_*` functions run on one rank with any communicator: test_split_mpi.py calls
them under mpiexec.
"""
import numpy as np
import oracle
import pytest
from test_model_parallel import (
    GRID,
    assert_same_model,
    conv_problem,
    fake_mnist,
    make_conv,
    single_steps,
    single_worker_run,
    split_steps,
    step_problem,
)

from minigrad import nn
from minigrad.data.transforms import mnist_normalize
from minigrad.distributed.comm_threads import launch_threads
from minigrad.distributed.common import replica
from minigrad.distributed.model_parallel import layer_sequence
from minigrad.distributed.tensor_slicing import (
    TensorSliced,
    allreduce_grads,
    conv_out_bands,
    conv_rows,
    even_bands,
    plan_bands,
    sliced_conv2d,
    train_tensor_slicing,
)
from minigrad.models import LeNet5, MnistCNN
from minigrad.random import manual_seed
from minigrad.tensor import Tensor


# --------------------------------------------------------------------- shared checks
def band_choices(p, n, algo=None):
    """{"planned": bands from plan_bands, "even": even input bands} for problem p."""
    conv = make_conv(p, algo)
    h = p["x"].shape[2]
    return {"planned": plan_bands([conv], h, n), "even": even_bands(h, n)}


def has_empty_output_band(p, bands):
    kh, s, pad = conv_rows(make_conv(p))
    out, _ = conv_out_bands(bands, p["x"].shape[2], kh, s, pad)
    return any(o1 <= o0 for o0, o1 in out)


def check_sliced_conv(comm, p, bands, algo=None):
    """My band of the conv: my rows of y and dX, and (after the allreduce) the whole dW
    and db, against PyTorch. Returns (my output rows, halo bytes I sent)."""
    conv = make_conv(p, algo)
    h = p["x"].shape[2]
    lo, hi = bands[comm.rank]
    x = Tensor(p["x"][:, :, lo:hi].copy(), requires_grad=True)
    sent = []
    y, out_bands, ho = sliced_conv2d(conv, x, comm, bands, h, count=sent.append)
    assert ho == p["y"].shape[2]
    o0, o1 = out_bands[comm.rank]
    y.backward(p["dy"][:, :, o0:o1])
    allreduce_grads(comm, conv.parameters())
    what = f"rank {comm.rank}/{comm.size} bands {bands}"
    dtype = p["dtype"]
    oracle.assert_close(y.data, p["y"][:, :, o0:o1], f"y {what}", dtype)
    oracle.assert_close(x.grad, p["dx"][:, :, lo:hi], f"dx {what}", dtype)
    oracle.assert_close(conv.weight.grad, p["dw"], f"dw {what}", dtype)
    oracle.assert_close(conv.bias.grad, p["db"], f"db {what}", dtype)
    return (o0, o1), sum(sent)


def check_tensor_sliced_step(comm, problem):
    """problem: step_problem(...), built once, outside the rank threads."""
    model, x, y = problem
    want, want_losses = single_steps(model, x, y)
    mine = replica(model)
    got, losses = split_steps(comm, TensorSliced(mine, comm), mine, x, y)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert_same_model(got, want, f"tensor slicing rank {comm.rank}/{comm.size}")


# ------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("h,stride,padding", GRID)
def test_sliced_conv_matches_torch(n, h, stride, padding):
    p = conv_problem(h, stride, padding)
    for name, bands in band_choices(p, n).items():
        if has_empty_output_band(p, bands):
            assert name == "even", bands  # plan_bands never leaves a worker without rows
            with pytest.raises(RuntimeError, match="own no output row"):
                launch_threads(n, lambda c, bands=bands: check_sliced_conv(c, p, bands))
            continue
        results = launch_threads(n, lambda c, bands=bands: check_sliced_conv(c, p, bands))
        rows = [r[0] for r in results]  # the output bands tile the output's rows
        assert rows[0][0] == 0 and rows[-1][1] == p["y"].shape[2]
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:], strict=False))


@pytest.mark.parametrize("k,padding", [(5, 2), (5, 0), (1, 0), (3, 1)])
def test_sliced_conv_other_kernels_and_float32(k, padding):
    p = conv_problem(11, 1, padding, dtype=np.float32, k=k)
    for bands in band_choices(p, 3).values():
        launch_threads(3, lambda c, bands=bands: check_sliced_conv(c, p, bands))


@pytest.mark.parametrize("algo", ["kn2row", "direct"])
def test_sliced_conv_with_other_lowerings(algo):
    p = conv_problem(10, 1, 1, dtype=np.float32)
    launch_threads(2, lambda c: check_sliced_conv(c, p, even_bands(10, 2), algo))


def test_halo_is_kh_over_2_rows_to_each_neighbour_only():
    """A 3x3 "same" conv on 4 bands: the middle workers send one row up and one down,
    forward and backward; the edge workers one row each way: never a whole map."""
    p = conv_problem(12, 1, 1, n=2, c=3, w=6)
    results = launch_threads(4, lambda c: check_sliced_conv(c, p, even_bands(12, 4)))
    row = 2 * 3 * 6 * 8  # batch x channels x width x float64
    assert [sent for _, sent in results] == [2 * row, 4 * row, 4 * row, 2 * row]


def test_plan_bands_aligns_with_pooling():
    layers = layer_sequence(MnistCNN())
    assert plan_bands(layers, 28, 1) == [(0, 28)]
    assert plan_bands(layers, 28, 2) == [(0, 16), (16, 28)]   # 7 rows -> 4 + 3, x4
    assert plan_bands(layers, 28, 3) == [(0, 12), (12, 20), (20, 28)]
    # LeNet-5: conv 5x5 pad 2, pool, conv 5x5 pad 0 (14 -> 10 rows), pool (5 rows)
    assert plan_bands(layer_sequence(LeNet5()), 28, 3) == [(0, 12), (12, 20), (20, 28)]
    with pytest.raises(ValueError, match="too few"):
        plan_bands(layers, 28, 8)


def test_bands_that_cut_a_pooling_window_are_refused():
    manual_seed(0)
    model = MnistCNN()
    x = Tensor(np.zeros((2, 1, 28, 28), dtype=np.float32))

    def body(c):
        net = TensorSliced(model, c)
        net._plans[28] = even_bands(28, 3)  # 10, 9, 9 rows: 10 is not a multiple of 2
        net(x)

    with pytest.raises(RuntimeError, match="cut 2-row pooling windows"):
        launch_threads(3, body)


def test_models_without_convolutions_are_refused():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(RuntimeError, match="no Conv2d"):
        launch_threads(2, lambda c: TensorSliced(model, c))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tensor_sliced_mnist_cnn_steps_like_one_worker(n):
    problem = step_problem(MnistCNN)
    launch_threads(n, lambda c: check_tensor_sliced_step(c, problem))


def test_tensor_sliced_lenet5_steps_like_one_worker():
    problem = step_problem(LeNet5)
    launch_threads(3, lambda c: check_tensor_sliced_step(c, problem))


def test_train_tensor_slicing_matches_single_worker_and_counts_bytes():
    """Two workers, 2 epochs of fake MNIST: the same weights as one worker's `fit`, and
    per step: halo rows (conv1's input row forward; conv2's input row forward and its
    gradient back), worker 0's 4 of the last map's 7 rows, and the conv dW allreduce."""
    train, test = fake_mnist(256), fake_mnist(64, seed=1)
    manual_seed(0)
    model = MnistCNN()
    ref = replica(model)
    B = 32
    s = train_tensor_slicing(model, train, test, workers=2, epochs=2, batch_size=B,
                             lr=0.05, optimizer="sgd", momentum=0.9,
                             transform=mnist_normalize)
    ref_accuracy = single_worker_run(ref, train, test, epochs=2, batch_size=B, lr=0.05)
    assert_same_model(model, ref, "after training", rtol=1e-3, atol=1e-5)
    assert s["test_accuracy"] == pytest.approx(ref_accuracy, abs=1 / 64)
    halo = 4 * B * (1 * 28 + 32 * 14 + 32 * 14)
    band = 4 * B * 64 * 4 * 7
    conv_grads = 4 * (32 * 9 + 32 + 64 * 32 * 9 + 64)
    assert s["halo_bytes_per_step"] == halo
    assert s["bytes_per_step"] == halo + band + conv_grads
    total = sum(p.data.nbytes for p in model.parameters())
    assert s["param_bytes_per_worker"] == total  # weights are replicated
    assert s["optimizer_bytes_per_worker"] == total  # momentum
    assert s["per_rank"]["activation_bytes"][1] < s["per_rank"]["activation_bytes"][0]


def test_too_many_bands_is_a_value_error():
    train = fake_mnist(32)
    with pytest.raises(ValueError, match="7 rows, too few for 8 workers"):
        train_tensor_slicing(MnistCNN(), train, train, workers=8, batch_size=32,
                             transform=mnist_normalize)
