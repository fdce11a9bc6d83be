"""Tensor decomposition of convolutions (minigrad/tools/compress.py).

The decompositions recover synthetic low-rank tensors at their true rank; the factored
modules compute a convolution with their reconstructed weight (values and every parameter's
gradient against the same chain in PyTorch, whose depthwise steps use real groups); parameter
and FLOP counts; the rank chooser; and the compression spec through a state dict and a
checkpoint, and the `minigrad compress` command on an MNIST checkpoint.
"""
import argparse
import json

import numpy as np
import pytest

from minigrad import functional as F
from minigrad import models, nn
from minigrad.checkpoint import read_checkpoint, save_checkpoint
from minigrad.tensor import Parameter, Tensor
from minigrad.tools import compress as C

torch = pytest.importorskip("torch")


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def low_rank_tucker(rng, shape, ranks):
    m, c, kh, kw = shape
    core = rng.standard_normal((ranks[0], ranks[1], kh, kw))
    return C.tucker2_weight(core, rng.standard_normal((m, ranks[0])),
                            rng.standard_normal((c, ranks[1])))


def low_rank_cp(rng, shape, rank):
    return C.cp_weight([rng.standard_normal((d, rank)) for d in shape])


# ------------------------------------------------------------------ decompositions


@pytest.mark.parametrize("hooi_iters", [0, 3])
@pytest.mark.parametrize("shape, ranks", [((16, 12, 3, 3), (5, 4)), ((9, 20, 3, 5), (9, 2)),
                                          ((6, 6, 1, 1), (3, 3))])
def test_tucker2_recovers_a_low_rank_tensor(shape, ranks, hooi_iters):
    w = low_rank_tucker(np.random.default_rng(0), shape, ranks)
    core, u_out, u_in = C.tucker2(w, ranks, hooi_iters)
    assert core.shape == ranks + shape[2:]
    assert u_out.shape == (shape[0], ranks[0]) and u_in.shape == (shape[1], ranks[1])
    np.testing.assert_allclose(u_out.T @ u_out, np.eye(ranks[0]), atol=1e-12)
    assert rel(C.tucker2_weight(core, u_out, u_in), w) < 1e-6
    # one rank too few cannot be exact
    core, u_out, u_in = C.tucker2(w, (ranks[0] - 1 or 1, ranks[1]), hooi_iters)
    if ranks[0] > 1:
        assert rel(C.tucker2_weight(core, u_out, u_in), w) > 1e-3


def test_hooi_never_worse_than_hosvd():
    w = np.random.default_rng(1).standard_normal((20, 16, 3, 3))
    errs = [rel(C.tucker2_weight(*C.tucker2(w, (6, 5), it)), w) for it in (0, 1, 4)]
    assert errs[1] <= errs[0] + 1e-12 and errs[2] <= errs[1] + 1e-12


@pytest.mark.parametrize("shape, rank", [((10, 7, 3, 3), 3), ((16, 8, 3, 3), 5),
                                         ((12, 9, 1, 5), 2)])
def test_cp_als_recovers_a_low_rank_tensor(shape, rank):
    w = low_rank_cp(np.random.default_rng(2), shape, rank)
    factors, err = C.cp_als(w, rank)
    assert [f.shape for f in factors] == [(d, rank) for d in shape]
    assert err < 1e-6 and rel(C.cp_weight(factors), w) < 1e-6


def test_unfold_and_mode_product_agree():
    t = np.random.default_rng(3).standard_normal((4, 5, 3, 2))
    mat = np.random.default_rng(4).standard_normal((6, 5))
    # (t x_2 mat)_(2) = mat @ t_(2)
    np.testing.assert_allclose(C.unfold(C.mode_product(t, mat, 1), 1), mat @ C.unfold(t, 1),
                               atol=1e-12)


# ------------------------------------------------------------------ the factored modules


def _trained_like_conv(rng, c, m, kernel, stride, padding, dtype=np.float64, bias=True):
    conv = nn.Conv2d(c, m, kernel, stride, padding, bias=bias, dtype=dtype)
    conv.weight.data = rng.standard_normal(conv.weight.shape).astype(dtype)
    if bias:
        conv.bias.data = rng.standard_normal(m).astype(dtype)
    return conv


def _torch_chain(fact, x, dy):
    """The factored module's chain in PyTorch (depthwise with groups), float64: y and the
    gradients of x and of every parameter, by name."""
    params = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True)
              for k, v in fact.state_dict().items()}
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    f = torch.nn.functional
    (sh, sw), (ph, pw) = fact.stride, fact.padding
    bias = params.get("last.bias")
    if isinstance(fact, C.Tucker2Conv2d):
        h = f.conv2d(xt, params["first.weight"])
        h = f.conv2d(h, params["core.weight"], stride=(sh, sw), padding=(ph, pw))
    else:
        h = f.conv2d(xt, params["first.weight"])
        h = f.conv2d(h, params["vertical"], stride=(sh, 1), padding=(ph, 0), groups=fact.rank)
        h = f.conv2d(h, params["horizontal"], stride=(1, sw), padding=(0, pw),
                     groups=fact.rank)
    y = f.conv2d(h, params["last.weight"], bias)
    y.backward(torch.tensor(np.asarray(dy, np.float64)))
    return (y.detach().numpy(), xt.grad.numpy(),
            {k: p.grad.numpy() for k, p in params.items()})


CONV_CASES = [  # C, M, kernel, stride, padding
    (6, 8, 3, 1, 1),
    (5, 7, (3, 5), (2, 1), (1, 2)),     # non-square kernel: KHx1 and 1xKW steps differ
    (4, 3, 3, 2, 0),
]


@pytest.mark.parametrize("method", ["tucker2", "cp"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_factored_forward_and_grads_match_torch(method, case):
    c, m, kernel, stride, padding = case
    rng = np.random.default_rng(5)
    conv = _trained_like_conv(rng, c, m, kernel, stride, padding)
    fact = (C.Tucker2Conv2d.from_conv(conv, (3, 2)) if method == "tucker2"
            else C.CPConv2d.from_conv(conv, 4))
    x = rng.standard_normal((2, c, 9, 8))
    xt = Tensor(x, requires_grad=True)
    y = fact(xt)
    # the chain is a convolution with the reconstructed weight
    want = F.conv2d(Tensor(x), Tensor(fact.weight()), conv.bias, stride, padding).data
    np.testing.assert_allclose(y.data, want, rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    y.backward(dy)
    ty, tdx, tgrads = _torch_chain(fact, x, dy)
    np.testing.assert_allclose(y.data, ty, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(xt.grad, tdx, rtol=1e-10, atol=1e-10)
    for name, p in fact.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        np.testing.assert_allclose(p.grad, tgrads[name], rtol=1e-9, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("method", ["tucker2", "cp"])
def test_float32_grads_keep_dtype(method):
    rng = np.random.default_rng(6)
    conv = _trained_like_conv(rng, 4, 6, 3, 1, 1, dtype=np.float32)
    fact = C.Tucker2Conv2d.from_conv(conv, 2) if method == "tucker2" else \
        C.CPConv2d.from_conv(conv, 3)
    x = Tensor(rng.standard_normal((1, 4, 5, 5)).astype(np.float32), requires_grad=True)
    y = fact(x)
    y.backward(np.ones(y.shape, np.float32))
    assert y.dtype == np.float32 and x.grad.dtype == np.float32
    assert all(p.dtype == np.float32 and p.grad.dtype == np.float32
               for p in fact.parameters())


def test_full_rank_tucker2_is_the_layer():
    conv = _trained_like_conv(np.random.default_rng(7), 4, 5, 3, 1, 1)
    fact = C.Tucker2Conv2d.from_conv(conv, (5, 4))
    assert rel(fact.weight(), conv.weight.data) < 1e-12


def test_parameter_and_flop_counts():
    conv = nn.Conv2d(32, 64, 3, padding=1)
    t = C.Tucker2Conv2d.like(conv, (24, 12))
    assert t.num_parameters() == 32 * 12 + 12 * 24 * 9 + 24 * 64 + 64
    assert t.flops((14, 14)) == 2 * 196 * (32 * 12 + 12 * 24 * 9 + 24 * 64)
    cp = C.CPConv2d.like(conv, 10)
    assert cp.num_parameters() == 10 * (32 + 3 + 3 + 64) + 64
    assert cp.flops((14, 14)) == 2 * 196 * (32 * 10 + 10 * 3 + 10 * 3 + 10 * 64)
    assert cp.executed_flops((14, 14)) == 2 * 196 * (32 * 10 + 100 * 3 + 100 * 3 + 10 * 64)
    s = C.Tucker2Conv2d.like(nn.Conv2d(8, 4, (3, 5), stride=2, padding=(0, 1)), (2, 3))
    # (9, 10) input: 1x1 at 9x10, core and last at 4x4
    assert s.flops((9, 10)) == 2 * (8 * 3 * 90 + 3 * 2 * 15 * 16 + 2 * 4 * 16)


# ------------------------------------------------------------------ choosing the rank


@pytest.mark.parametrize("ratio", [2, 4, 8, 10.5])
@pytest.mark.parametrize("shape", [(64, 32, 3, 3), (128, 64, 3, 3), (16, 48, 5, 5)])
def test_ratio_hits_the_budget(shape, ratio):
    m, c, kh, kw = shape
    before = m * c * kh * kw + m
    r_out, r_in = C.choose_tucker2_ranks(shape, ratio=ratio)
    t = C._params_tucker2(m, c, kh, kw, r_out, r_in, True)
    assert t <= before / ratio
    nxt_in = r_in + 1
    if nxt_in <= c:  # the next ranks on the same M/C line no longer fit
        nxt_out = min(m, max(1, round(nxt_in * m / c)))
        assert C._params_tucker2(m, c, kh, kw, nxt_out, nxt_in, True) > before / ratio
    r = C.choose_cp_rank(shape, ratio=ratio)
    assert C._params_cp(m, c, kh, kw, r, True) <= before / ratio
    assert C._params_cp(m, c, kh, kw, r + 1, True) > before / ratio


def test_rank_by_energy_finds_the_true_rank():
    w = low_rank_tucker(np.random.default_rng(8), (20, 16, 3, 3), (6, 4))
    assert C.choose_tucker2_ranks(w.shape, energy=0.999999, w=w) == (6, 4)
    assert C.choose_tucker2_ranks(w.shape, energy=0.3, w=w)[0] < 6
    assert C.choose_cp_rank(w.shape, energy=0.999999, w=w) == 6


def test_rank_choice_errors():
    with pytest.raises(ValueError, match="exactly one of rank, ratio, energy"):
        C.choose_tucker2_ranks((8, 8, 3, 3), rank=2, ratio=2)
    with pytest.raises(ValueError, match="no ranks give 1000"):
        C.choose_tucker2_ranks((8, 8, 3, 3), ratio=1000)
    with pytest.raises(ValueError, match="no rank gives 1000"):
        C.choose_cp_rank((8, 8, 3, 3), ratio=1000)
    with pytest.raises(ValueError, match="one int"):
        C.choose_cp_rank((8, 8, 3, 3), rank=(2, 3))
    assert C.choose_tucker2_ranks((8, 4, 3, 3), rank=6) == (6, 4)  # clipped to C


# ------------------------------------------------------------------ whole models


def _mnist_cnn(seed=0):
    from minigrad.random import manual_seed

    manual_seed(seed)
    return models.MnistCNN()


@pytest.mark.parametrize("method", ["tucker2", "cp"])
def test_compress_model_replaces_conv2_and_reports(method):
    model = _mnist_cnn()
    new, report = C.compress_model(model, method, ratio=4, input_shape=(1, 1, 28, 28),
                                   cp_iters=30)
    assert isinstance(new.conv1, nn.Conv2d)  # C = 1: left alone by default
    assert isinstance(new.conv2, C.Tucker2Conv2d if method == "tucker2" else C.CPConv2d)
    assert isinstance(model.conv2, nn.Conv2d)  # the original is untouched
    (entry,) = report["layers"]
    assert entry["name"] == "conv2" and entry["input_hw"] == [14, 14]
    assert entry["params_before"] == 18496 and entry["params_after"] <= 18496 / 4
    assert entry["flops_before"] == 2 * 32 * 64 * 9 * 196
    assert entry["flops_after"] < entry["flops_before"] / 3
    assert 0 < entry["rel_error"] < 1
    assert report["params_before"] - report["params_after"] == 18496 - entry["params_after"]
    json.dumps(report)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32))
    assert new(x).shape == (2, 10)


def test_compress_model_layer_errors():
    model = _mnist_cnn()
    with pytest.raises(ValueError, match="no layer named 'conv9'.*conv1, conv2"):
        C.compress_model(model, rank=2, layers=["conv9"])
    with pytest.raises(ValueError, match="not a Conv2d"):
        C.compress_model(model, rank=2, layers=["fc1"])
    with pytest.raises(ValueError, match="unknown method"):
        C.compress_model(model, "svd", rank=2)
    new, report = C.compress_model(model, rank=4, layers=["conv1", "conv2"])
    assert [e["ranks"] for e in report["layers"]] == [[4, 1], [4, 4]]
    assert report["layers"][0]["flops_before"] is None  # no input_shape given


@pytest.mark.parametrize("method", ["tucker2", "cp"])
def test_spec_round_trip_through_a_state_dict(method):
    new, _ = C.compress_model(_mnist_cnn(), method, rank=5, cp_iters=20)
    spec = json.loads(json.dumps(C.compression_spec(new)))
    assert spec["layers"] == [{"name": "conv2", "method": method,
                               **({"ranks": [5, 5]} if method == "tucker2" else {"rank": 5})}]
    fresh = C.apply_spec(_mnist_cnn(seed=1), spec)
    C.apply_spec(fresh, spec)  # twice: a no-op
    fresh.load_state_dict(new.state_dict())
    x = Tensor(np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32))
    np.testing.assert_array_equal(fresh(x).data, new(x).data)
    with pytest.raises(ValueError, match="missing keys"):  # the plain model does not fit
        _mnist_cnn().load_state_dict(new.state_dict())


def test_spec_round_trip_through_a_checkpoint(tmp_path):
    new, _ = C.compress_model(_mnist_cnn(), ratio=4)
    path = tmp_path / "small.npz"
    C.save_compressed(path, new, {"task": "mnist", "epoch": 3, "best_loss": 0.1})
    _, optim, meta = read_checkpoint(path)
    assert not optim and meta["epoch"] == 3 and "best_loss" not in meta
    assert json.loads(meta["compression"]) == C.compression_spec(new)
    fresh = _mnist_cnn(seed=2)
    assert C.load_compressed(path, fresh)["task"] == "mnist"
    x = Tensor(np.random.default_rng(2).standard_normal((1, 1, 28, 28)).astype(np.float32))
    np.testing.assert_array_equal(fresh(x).data, new(x).data)
    # an uncompressed checkpoint loads as before
    plain = tmp_path / "plain.npz"
    save_checkpoint(plain, _mnist_cnn(), meta={"task": "mnist"})
    model = _mnist_cnn(seed=3)
    C.load_compressed(plain, model)
    assert isinstance(model.conv2, nn.Conv2d)


def test_factored_parameters_train():
    """After apply_spec an optimizer over model.parameters() reaches the factors."""
    from minigrad import optim

    model, _ = C.compress_model(_mnist_cnn(), "cp", rank=3, cp_iters=20)
    opt = optim.SGD(model.parameters(), lr=0.1)
    before = model.conv2.vertical.data.copy()
    x = Tensor(np.random.default_rng(3).standard_normal((4, 1, 28, 28)).astype(np.float32))
    loss = F.cross_entropy(model(x), np.array([0, 1, 2, 3]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert isinstance(model.conv2.vertical, Parameter)
    assert not np.array_equal(before, model.conv2.vertical.data)


# ------------------------------------------------------------------ the command


@pytest.mark.mnist
def test_compress_command(tmp_path, capsys):
    ckpt, out = tmp_path / "ck.npz", tmp_path / "small.npz"
    save_checkpoint(ckpt, _mnist_cnn(), meta={"task": "mnist", "seed": 0, "epoch": 1})
    parser = argparse.ArgumentParser()
    C.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compress", str(ckpt), "--ratio", "4", "--out", str(out),
                              "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layers"][0]["ranks"] == [24, 12]
    assert report["layers"][0]["flops_before"] == 2 * 32 * 64 * 9 * 196
    model = _mnist_cnn(seed=5)
    meta = C.load_compressed(out, model)
    assert isinstance(model.conv2, C.Tucker2Conv2d) and meta["epoch"] == 1
    bad = parser.parse_args(["compress", str(ckpt), "--ratio", "100000", "--out",
                             str(tmp_path / "x.npz")])
    assert bad.func(bad) == 2
    assert "no ranks give" in capsys.readouterr().err


def test_resume_a_compressed_checkpoint_with_fit(tmp_path):
    """What `minigrad train --resume NEW` does: factor the fresh model from the checkpoint's
    meta (prepare_resume), build the optimizer, then fit(resume=...) loads and trains on."""
    from minigrad.data.loader import DataLoader
    from minigrad.data.transforms import mnist_normalize
    from minigrad.train import fit, make_optimizer

    rng = np.random.default_rng(4)
    X = rng.integers(0, 256, (32, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 32)
    small, _ = C.compress_model(_mnist_cnn(), ratio=4)
    path = tmp_path / "small.npz"
    C.save_compressed(path, small, {"task": "mnist", "model": "cnn", "optimizer": "adam",
                                    "epoch": 1})
    model = _mnist_cnn(seed=9)
    _, _, meta = read_checkpoint(path)
    C.prepare_resume(model, meta)
    opt = make_optimizer("adam", model.parameters(), 1e-3)
    loader = DataLoader((X, y), batch_size=16, shuffle=True, seed=0, num_workers=0,
                        transform=mnist_normalize)
    with loader:
        summary = fit(model, opt, loader, (X[:8], y[:8]), 2, eval_transform=mnist_normalize,
                      resume=str(path), meta={"task": "mnist", "model": "cnn",
                                              "optimizer": "adam"}, log=lambda s: None)
    assert len(summary["history"]) == 1  # epoch 2 of 2
    assert not np.array_equal(model.conv2.core.weight.data, small.conv2.core.weight.data)


@pytest.mark.parametrize("argv,message", [
    (["--rank", "abc"], "--rank takes R or R_OUT,R_IN"),
    (["--ratio", "4", "--out", "{tmp}/a_file/x.npz"], "is a file, not a directory"),
])
def test_compress_refuses_bad_arguments_before_any_work(argv, message, tmp_path, capsys):
    from minigrad import cli

    (tmp_path / "a_file").write_text("")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out.npz")]
    # the checkpoint does not even exist: the arguments are refused first
    assert cli.main(["compress", str(tmp_path / "missing.npz"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigrad compress: ") and message in err[0]
