"""Model parallelism (minigrad.distributed.model_parallel) on threads.

A filter-split conv layer must give, on every worker, the whole output and the whole dX,
and on each worker its filters' dW and db, exactly as PyTorch does for the whole layer
(tests/oracle.py), for N = 1, 2, 3, odd and even heights, strides 1-2, paddings 0-2. A
filter-split MNIST CNN must take the same SGD steps as the single-worker one, and a
training run must count the bytes the picture in the module docstring says it sends.

The `check_*` functions run on one rank with any communicator: test_split_mpi.py calls
them under mpiexec.
"""
import numpy as np
import oracle
import pytest

from minigrad import functional as F
from minigrad import nn, optim
from minigrad.data.transforms import mnist_normalize
from minigrad.distributed.comm_threads import launch_threads
from minigrad.distributed.common import replica
from minigrad.distributed.model_parallel import (
    ModelParallel,
    SplitConv2d,
    SplitLinear,
    enter_split,
    gather,
    reduce_scatter,
    split_sizes,
    train_model_parallel,
)
from minigrad.models import LeNet5, MnistCNN
from minigrad.random import manual_seed
from minigrad.tensor import Tensor

HEIGHTS, STRIDES, PADDINGS = (7, 10, 11), (1, 2), (0, 1, 2)
GRID = [(h, s, p) for h in HEIGHTS for s in STRIDES for p in PADDINGS]


# --------------------------------------------------------------------- shared checks
def fake_mnist(n, seed=0):
    """n MNIST-shaped uint8 images whose label is the brightest of 10 horizontal stripes
    (learnable, so accuracy means something), as load_mnist returns them."""
    rng = np.random.default_rng([seed, n])
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, 28, 28))
    for i, label in enumerate(y):
        x[i, 2 + 2 * label:4 + 2 * label] += 180
    return x.astype(np.uint8), y.astype(np.int64)


def single_worker_run(model, train, test, *, epochs, batch_size, lr, seed=0):
    """minigrad's own single-worker training (`fit`, SGD with momentum 0.9, the loader
    order of `seed`); returns the test accuracy and leaves the weights in `model`."""
    from minigrad.data.loader import DataLoader
    from minigrad.train import fit, make_optimizer

    loader = DataLoader(train, batch_size=batch_size, shuffle=True, seed=seed,
                        num_workers=0, transform=mnist_normalize)
    summary = fit(model, make_optimizer("sgd", model.parameters(), lr, momentum=0.9), loader,
                  test, epochs, eval_transform=mnist_normalize, log=lambda s: None)
    return summary["test_accuracy"]


def conv_problem(h, stride, padding, dtype=np.float64, n=2, c=3, w=6, m=5, k=3, seed=0):
    """x, weight, bias, dy and PyTorch's y, dx, dw, db for one conv layer (with bias)."""
    case = oracle.ConvCase.of(n, c, h, w, m, k, k, stride, padding)
    x, wt, dy = case.data(dtype, seed)
    b = np.random.default_rng([seed, h, stride, padding]).standard_normal(m).astype(dtype)
    y, dx, dw = oracle.torch_conv(x, wt, dy, stride, padding)
    return {"x": x, "w": wt, "b": b, "dy": dy, "y": y + b.reshape(1, -1, 1, 1), "dx": dx,
            "dw": dw, "db": dy.astype(np.float64).sum(axis=(0, 2, 3)), "stride": stride,
            "padding": padding, "dtype": dtype}


def make_conv(p, algo=None):
    m, c, k, _ = p["w"].shape
    conv = nn.Conv2d(c, m, k, stride=p["stride"], padding=p["padding"], algo=algo,
                     dtype=p["dtype"])
    conv.weight.data[...] = p["w"]
    conv.bias.data[...] = p["b"]
    return conv


def check_split_conv(comm, p, algo=None):
    """This rank's filters of the conv: the gathered y and the summed dX are whole and
    right on every rank; dW and db are right for my filters. Returns my (lo, hi)."""
    split = SplitConv2d(make_conv(p, algo), comm)
    x = Tensor(p["x"].copy(), requires_grad=True)
    y = gather(split(enter_split(x, comm)), comm, split.sizes, grad="slice")
    y.backward(p["dy"])
    what = f"rank {comm.rank}/{comm.size}"
    dtype = p["dtype"]
    oracle.assert_close(y.data, p["y"], f"y {what}", dtype)
    oracle.assert_close(x.grad, p["dx"], f"dx {what}", dtype)
    oracle.assert_close(split.weight.grad, p["dw"][split.lo:split.hi], f"dw {what}", dtype)
    oracle.assert_close(split.bias.grad, p["db"][split.lo:split.hi], f"db {what}", dtype)
    return split.lo, split.hi


def step_problem(model_cls=MnistCNN, batch=6, seed=0):
    manual_seed(seed)
    model = model_cls()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    return model, x, y


def single_steps(model, x, y, steps=3, lr=0.05):
    """The single-worker reference: `steps` SGD-momentum steps on the same batch."""
    model = replica(model)
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(Tensor(x)), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    return model, losses


def split_steps(comm, net, model, x, y, steps=3, lr=0.05):
    """The same steps through a split network `net` (made from `model`); returns the whole
    trained model (assembled on this rank) and the losses."""
    opt = optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(net(Tensor(x)), y)
        loss.backward()
        if hasattr(net, "after_backward"):
            net.after_backward()
        opt.step()
        losses.append(float(loss.data))
    return net.assemble(model), losses


def assert_same_model(got, want, what, rtol=1e-4, atol=1e-6):
    for (name, p), (_, q) in zip(got.named_parameters(), want.named_parameters(),
                                 strict=True):
        np.testing.assert_allclose(p.data, q.data, rtol=rtol, atol=atol,
                                   err_msg=f"{name} {what}")


def check_model_parallel_step(comm, problem):
    """problem: step_problem(...), built once (the model's initial weights come from the
    global generator, which threads must not draw from at the same time)."""
    model, x, y = problem
    want, want_losses = single_steps(model, x, y)
    mine = replica(model)
    got, losses = split_steps(comm, ModelParallel(mine, comm), mine, x, y)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert_same_model(got, want, f"model parallel rank {comm.rank}/{comm.size}")


# ------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("h,stride,padding", GRID)
def test_split_conv_matches_torch(n, h, stride, padding):
    p = conv_problem(h, stride, padding)
    shares = launch_threads(n, lambda c: check_split_conv(c, p))
    assert shares == [(lo, hi) for lo, hi in zip([0, *np.cumsum(split_sizes(5, n))[:-1]],
                                                   np.cumsum(split_sizes(5, n)), strict=True)]


@pytest.mark.parametrize("algo", ["kn2row", "direct", "im2row"])
def test_split_conv_with_other_lowerings(algo):
    p = conv_problem(9, 1, 1, dtype=np.float32)
    launch_threads(2, lambda c: check_split_conv(c, p, algo))


def test_split_sizes_are_uneven_and_refuse_empty_shares():
    assert split_sizes(10, 3) == [4, 3, 3]
    assert split_sizes(32, 2) == [16, 16]
    with pytest.raises(ValueError, match="at least one"):
        split_sizes(2, 3)


def test_reduce_scatter_sums_blocks_and_sends_the_others_blocks():
    sizes = [3, 2, 2]
    parts = [np.random.default_rng(r).standard_normal((4, 7, 5)) for r in range(3)]
    total = sum(parts)

    def body(c):
        mine = reduce_scatter(c, parts[c.rank], sizes, axis=1)
        lo = [0, 3, 5, 7]
        np.testing.assert_allclose(mine, total[:, lo[c.rank]:lo[c.rank + 1]], rtol=1e-12)
        # sent: every other worker's block of my array
        return c.bytes_sent == sum(4 * sizes[q] * 5 * 8 for q in range(3) if q != c.rank)

    assert launch_threads(3, body) == [True, True, True]


def test_split_linear_matches_the_whole_layer():
    manual_seed(1)
    lin = nn.Linear(7, 5, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((4, 7))
    g = np.random.default_rng(1).standard_normal((4, 5))
    xt = Tensor(x, requires_grad=True)
    F.linear(xt, lin.weight, lin.bias).backward(g)

    def body(c):
        split = SplitLinear(lin, c)
        xs = Tensor(x.copy(), requires_grad=True)
        gather(split(enter_split(xs, c)), c, split.sizes, grad="slice").backward(g)
        np.testing.assert_allclose(xs.grad, xt.grad, rtol=1e-12)
        np.testing.assert_allclose(split.weight.grad, lin.weight.grad[split.lo:split.hi],
                                   rtol=1e-12)
        np.testing.assert_allclose(split.bias.grad, lin.bias.grad[split.lo:split.hi],
                                   rtol=1e-12)

    launch_threads(3, body)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_model_parallel_mnist_cnn_steps_like_one_worker(n):
    problem = step_problem(MnistCNN)
    launch_threads(n, lambda c: check_model_parallel_step(c, problem))


def test_model_parallel_lenet5_steps_like_one_worker():
    problem = step_problem(LeNet5)
    launch_threads(2, lambda c: check_model_parallel_step(c, problem))


def test_worker_holds_its_share_of_parameters():
    model = MnistCNN()
    total = sum(p.data.nbytes for p in model.parameters())

    def body(c):
        return sum(p.data.nbytes for p in ModelParallel(model, c).parameters())

    shares = launch_threads(3, body)
    assert sum(shares) == total
    assert max(shares) - min(shares) < 0.01 * total


def test_unsupported_layers_are_refused():
    model = nn.Sequential(nn.Linear(4, 8), nn.Softmax(), nn.Linear(8, 3))
    with pytest.raises(RuntimeError, match="Softmax"):
        launch_threads(2, lambda c: ModelParallel(model, c))


def test_train_model_parallel_matches_single_worker_and_counts_bytes():
    """Two workers, 2 epochs of fake MNIST: the same weights as one worker's `fit`, and the
    bytes of the module docstring's picture, step by step."""
    train, test = fake_mnist(256), fake_mnist(64, seed=1)
    manual_seed(0)
    model = MnistCNN()
    ref = replica(model)
    B, N = 32, 2
    s = train_model_parallel(model, train, test, workers=N, epochs=2, batch_size=B,
                             lr=0.05, optimizer="sgd", momentum=0.9, transform=mnist_normalize)
    ref_accuracy = single_worker_run(ref, train, test, epochs=2, batch_size=B, lr=0.05)
    assert_same_model(model, ref, "after training", rtol=1e-3, atol=1e-5)
    assert s["test_accuracy"] == pytest.approx(ref_accuracy, abs=1 / 64)
    assert s["steps"] == 2 * 256 // B and s["workers"] == N
    # allgathers: my pooled conv1 and conv2 channels, my fc1, fc2, fc3 features; reduce-
    # scatters: the other worker's block of the gradients of conv2's, fc1's, fc2's and
    # fc3's gathered inputs (the logits' gather needs no backward traffic).
    gathered = 16 * 14 * 14 + 32 * 7 * 7 + 64 + 32 + 5
    scattered = 16 * 14 * 14 + 32 * 7 * 7 + 64 + 32
    assert s["bytes_per_step"] == 4 * B * (gathered + scattered)
    assert s["halo_bytes_per_step"] == 0
    total = sum(p.data.nbytes for p in model.parameters())
    assert s["param_bytes_total"] == total
    assert s["param_bytes_per_worker"] == pytest.approx(total / N, rel=0.01)
    assert s["optimizer_bytes_per_worker"] == s["param_bytes_per_worker"]  # momentum
    assert 0 < s["activation_bytes_per_worker"] and s["images_per_second"] > 0
    for key in ("test_accuracy", "train_seconds", "seconds_per_epoch", "bytes_sent",
                "bytes_moved", "epochs", "train_loss"):
        assert s[key] is not None, key


def test_a_split_that_cannot_work_is_a_value_error():
    """fc3 has 10 outputs: 11 workers cannot each hold one; said as a ValueError (the CLI
    turns it into exit status 2), not as a thread failure."""
    train = fake_mnist(32)
    with pytest.raises(ValueError, match="10 filters/features over 11 workers"):
        train_model_parallel(MnistCNN(), train, train, workers=11, batch_size=32,
                             transform=mnist_normalize)


def test_one_worker_sends_nothing_and_keeps_the_single_worker_graph():
    from minigrad.distributed.model_parallel import activation_bytes

    train = fake_mnist(32)
    manual_seed(0)
    model = MnistCNN()
    single = activation_bytes(replica(model), mnist_normalize(train)[0])
    s = train_model_parallel(model, train, train, workers=1, batch_size=32,
                             transform=mnist_normalize)
    assert s["bytes_sent"] == 0 and s["bytes_per_step"] == 0
    assert s["activation_bytes_per_worker"] == single
