"""The newer ops against PyTorch, values and gradients, in float32 and float64: tanh, sigmoid,
softmax, avg_pool2d, batch_norm, dropout, and the layers built on them (AvgPool2d,
BatchNorm2d with its running statistics and state, Dropout, train/eval modes)."""
import numpy as np
import pytest

import minigrad as mg
from minigrad import functional as F
from minigrad import nn

torch = pytest.importorskip("torch")
TF = torch.nn.functional
DTYPES = [np.float32, np.float64]


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


def compare(mg_fn, torch_fn, arrays, dtype, seed=0):
    """Same inputs to both; compare outputs and every input's gradient through a random
    projection of the output; gradients keep the input dtype."""
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    xs = [mg.Tensor(a.copy(), requires_grad=True) for a in arrays]
    ts = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    out, tout = mg_fn(*xs), torch_fn(*ts)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.data, tout.detach().numpy(), **tol(dtype))
    r = np.random.default_rng(seed).standard_normal(out.shape).astype(dtype)
    out.backward(r)
    tout.backward(torch.tensor(r))
    for i, (x, t) in enumerate(zip(xs, ts, strict=True)):
        assert x.grad.dtype == dtype
        np.testing.assert_allclose(x.grad, t.grad.numpy(), err_msg=f"input {i}", **tol(dtype))


def uniform(shape, low=-3.0, high=3.0, seed=0):
    return np.random.default_rng(seed).uniform(low, high, shape)


# --------------------------------------------------------------------------- activations

@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_sigmoid(dtype):
    compare(lambda a: a.tanh(), torch.tanh, [uniform((4, 5))], dtype)
    compare(F.tanh, torch.tanh, [uniform((3,))], dtype)
    compare(lambda a: a.sigmoid(), torch.sigmoid, [uniform((4, 5), -8, 8)], dtype)
    compare(F.sigmoid, torch.sigmoid, [uniform((2, 3))], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_saturate_without_overflow(dtype):
    a = np.array([-1000.0, -90.0, -30.0, 0.0, 30.0, 90.0, 1000.0])
    with np.errstate(over="raise", invalid="raise"):  # exp(1000) would overflow
        compare(lambda x: x.sigmoid(), torch.sigmoid, [a], dtype)
        compare(lambda x: x.tanh(), torch.tanh, [a], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(dtype, axis):
    compare(lambda a: a.softmax(axis), lambda t: torch.softmax(t, dim=axis),
            [uniform((3, 4, 5))], dtype)
    compare(lambda a: F.softmax(a, axis=axis), lambda t: torch.softmax(t, dim=axis),
            [uniform((3, 4, 5), seed=1)], dtype)


def test_softmax_huge_logits_are_stable():
    z = np.array([[1000.0, -1000.0, 0.0], [1e4, 1e4, -1e4]], dtype=np.float32)
    compare(lambda a: a.softmax(), lambda t: torch.softmax(t, dim=-1), [z], np.float32)


def test_activation_modules():
    x = mg.Tensor(uniform((2, 3)))
    np.testing.assert_array_equal(nn.Tanh()(x).data, x.tanh().data)
    np.testing.assert_array_equal(nn.Sigmoid()(x).data, x.sigmoid().data)
    np.testing.assert_array_equal(nn.Softmax(axis=0)(x).data, x.softmax(0).data)


# --------------------------------------------------------------------------- average pooling

POOLS = [  # shape, kernel, stride, padding
    ((2, 3, 8, 8), 2, None, 0),
    ((2, 2, 9, 7), 3, 2, 1),
    ((1, 2, 7, 7), 3, 1, 1),  # heavy overlap, padding counted in the average
    ((3, 1, 6, 7), (2, 3), (3, 2), (1, 0)),  # gaps between windows, rectangular
    ((1, 1, 5, 5), 5, None, 2),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(POOLS)))
def test_avg_pool2d_matches_torch(case, dtype):
    shape, k, s, p = POOLS[case]
    compare(lambda x: F.avg_pool2d(x, k, s, p), lambda t: TF.avg_pool2d(t, k, s, p),
            [uniform(shape, seed=case)], dtype)
    compare(lambda x: nn.AvgPool2d(k, s, p)(x), torch.nn.AvgPool2d(k, s, p),
            [uniform(shape, seed=case + 10)], dtype)


def test_avg_pool2d_errors_name_op_and_shapes():
    x = mg.Tensor(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"avg_pool2d: .*padding.*\(3, 3\)"):
        F.avg_pool2d(x, 2, padding=3)
    with pytest.raises(ValueError, match=r"avg_pool2d: kernel \(5, 5\).*\(1, 1, 4, 4\)"):
        F.avg_pool2d(x, 5)
    with pytest.raises(ValueError, match=r"avg_pool2d: input must be 4-D.*\(4, 4\)"):
        F.avg_pool2d(mg.Tensor(np.zeros((4, 4))), 2)


# --------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 4)], ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_functional(dtype, shape, training):
    c = shape[1]
    rng = np.random.default_rng(0)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    trm, trv = torch.tensor(rm.copy()), torch.tensor(rv.copy())
    x = uniform(shape) * 2 + 1

    def mg_fn(x, w, b):
        return F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.2, eps=1e-3)

    def t_fn(x, w, b):
        return TF.batch_norm(x, trm, trv, w, b, training=training, momentum=0.2, eps=1e-3)

    compare(mg_fn, t_fn, [x, uniform((c,), seed=1), uniform((c,), seed=2)], dtype)
    # running statistics moved the same way (unbiased variance), or not at all in eval
    np.testing.assert_allclose(rm, trm.numpy(), **tol(dtype))
    np.testing.assert_allclose(rv, trv.numpy(), **tol(dtype))
    assert rm.dtype == dtype and rv.dtype == dtype


def test_batch_norm_without_affine_or_running_stats():
    x = uniform((5, 2, 3, 3))
    compare(lambda a: F.batch_norm(a, None, None, training=True),
            lambda t: TF.batch_norm(t, None, None, training=True), [x], np.float64)


def test_batch_norm_errors():
    x = mg.Tensor(np.zeros((1, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"batch_norm: training needs more than one value "
                                         r"per channel.*\(1, 3, 1, 1\)"):
        F.batch_norm(x, None, None, training=True)
    with pytest.raises(ValueError, match=r"batch_norm: running_mean of shape \(4,\).*3 "
                                         r"channels"):
        F.batch_norm(x, np.zeros(4), np.ones(3), training=False)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): expected input \(N, 3, H, W\), "
                                         r"got shape \(2, 4, 5, 5\)"):
        nn.BatchNorm2d(3)(mg.Tensor(np.zeros((2, 4, 5, 5), np.float32)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm2d_module_train_eval_and_state(dtype):
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    bn, tbn = nn.BatchNorm2d(3, dtype=dtype), torch.nn.BatchNorm2d(3, dtype=tdtype)
    rng = np.random.default_rng(0)
    bn.weight.data[:] = rng.uniform(0.5, 2, 3)
    bn.bias.data[:] = rng.standard_normal(3)
    assert list(bn.state_dict()) == list(tbn.state_dict())  # PyTorch's names and order
    tbn.load_state_dict({k: torch.from_numpy(v) for k, v in bn.state_dict().items()})
    for step in range(3):  # training: batch statistics, running statistics move
        x = rng.standard_normal((4, 3, 5, 5)) * (step + 1) + step
        compare(bn, tbn, [x], dtype, seed=step)
    sd, tsd = bn.state_dict(), tbn.state_dict()
    for k in sd:
        np.testing.assert_allclose(sd[k], tsd[k].numpy(), err_msg=k, **tol(dtype))
    assert sd["num_batches_tracked"] == 3 and sd["running_mean"].dtype == dtype
    bn.eval()
    tbn.eval()
    x = rng.standard_normal((2, 3, 4, 4))
    compare(bn, tbn, [x], dtype)  # evaluation: the running statistics
    before = bn.state_dict()
    bn(mg.Tensor(x.astype(dtype)))
    for k, v in bn.state_dict().items():  # evaluation leaves the statistics alone
        np.testing.assert_array_equal(v, before[k])
    # a checkpoint (an .npz of state_dict, as minigrad.checkpoint writes) keeps them
    fresh = nn.BatchNorm2d(3, dtype=dtype).eval()
    fresh.load_state_dict(dict(np.load(_savez(sd))))
    y, ref = fresh(mg.Tensor(x.astype(dtype))), bn(mg.Tensor(x.astype(dtype)))
    np.testing.assert_array_equal(y.data, ref.data)
    assert fresh.num_batches_tracked == 3


def _savez(state):
    import io

    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    return buf


def test_module_buffers_in_nested_state_dict_and_to():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2),
                                 torch.nn.ReLU())
    assert list(model.state_dict()) == list(tmodel.state_dict())
    assert [n for n, _ in model.named_buffers()] == [
        "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert len(model.parameters()) == 4  # buffers are not parameters
    bn = model[1]
    bn.running_mean = np.full(2, 5.0, np.float32)  # reassigning keeps it a buffer
    assert model.state_dict()["1.running_mean"].tolist() == [5.0, 5.0]
    bad = model.state_dict()
    bad["1.running_var"] = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"1\.running_var: got \(3,\), expected \(2,\)"):
        model.load_state_dict(bad)
    assert model.to("cpu") is model and bn.running_mean.tolist() == [5.0, 5.0]


# --------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics_and_gradient_mask(dtype, p):
    mg.manual_seed(0)
    x = mg.Tensor(np.ones((200, 500), dtype), requires_grad=True)
    y = F.dropout(x, p, training=True)
    kept = y.data != 0
    assert y.dtype == dtype
    # inverted dropout: survivors are scaled by 1/(1-p), so the mean stays 1
    np.testing.assert_allclose(y.data[kept], 1 / (1 - p), rtol=1e-6)
    n = kept.size
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    assert abs(y.data.mean() - 1.0) < 5 * np.sqrt(p / (1 - p) / n)
    g = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    y.backward(g)
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad, np.where(kept, g / (1 - p), 0), rtol=1e-6)
    # torch's dropout has the same statistics and the same rule (scaled where kept)
    ty = TF.dropout(torch.ones(200, 500), p, training=True)
    tkept = ty != 0
    assert abs(tkept.float().mean().item() - kept.mean()) < 10 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(ty[tkept].numpy(), 1 / (1 - p), rtol=1e-6)


def test_dropout_eval_identity_edges_and_errors():
    x = mg.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    layer = nn.Dropout(0.5)
    layer.eval()
    assert layer(x) is x  # evaluation: the identity, like torch
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0, training=True) is x
    zeros = F.dropout(x, 1.0, training=True)
    np.testing.assert_array_equal(zeros.data, 0)
    zeros.sum().backward()
    np.testing.assert_array_equal(x.grad, 0)
    layer.train()
    mg.manual_seed(3)
    a = layer(x).data
    mg.manual_seed(3)
    np.testing.assert_array_equal(layer(x).data, a)  # reproducible from the seed
    with pytest.raises(ValueError, match=r"dropout: probability p must lie in \[0, 1\], got "
                                         r"1\.5 \(input shape \(2, 3\)\)"):
        F.dropout(x, 1.5)
    with pytest.raises(ValueError, match="Dropout: probability"):
        nn.Dropout(-0.1)


def test_train_eval_switch_recursive():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5),
                          nn.Sequential(nn.BatchNorm2d(1), nn.Dropout(0.2)))
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    model.train(False)
    assert not any(m.training for m in model.modules())
