"""Every Tensor op against PyTorch (values and gradients) and against finite differences."""
import numpy as np
import pytest

import minigrad as mg
from minigrad import functional as F
from minigrad import gradcheck

torch = pytest.importorskip("torch")


def check_op(shapes, mg_fn, torch_fn=None, low=-2.0, high=2.0, atol=1e-6, rtol=1e-5,
             grad_check=True, seed=0):
    """Run mg_fn and torch_fn on the same float64 inputs; compare outputs and input grads
    (through a random projection of the output), then gradcheck mg_fn."""
    torch_fn = torch_fn or mg_fn
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(low, high, size=s) for s in shapes]
    xs = [mg.Tensor(a, requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, tout = mg_fn(*xs), torch_fn(*ts)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), atol=atol, rtol=rtol)
    r = rng.standard_normal(tout.shape)
    (out * mg.Tensor(r)).sum().backward()
    (tout * torch.tensor(r)).sum().backward()
    for x, t in zip(xs, ts, strict=True):
        assert x.grad is not None and x.grad.shape == x.shape
        np.testing.assert_allclose(x.grad, t.grad.numpy(), atol=atol, rtol=rtol)
    if grad_check:
        assert gradcheck(mg_fn, arrays)


BINARY_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 3, 4), (3, 1)), ((1, 4), (5, 1)),
                 ((), (2, 3)), ((2, 1, 3), (1, 4, 1))]


@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=str)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_broadcasting(op, shapes):
    fn = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
          "mul": lambda a, b: a * b, "div": lambda a, b: a / b}[op]
    # keep divisors away from zero
    check_op(shapes, fn, low=0.5 if op == "div" else -2.0)


def test_scalar_operands_both_sides():
    check_op([(3, 4)], lambda a: 2 * a + 1 - a / 4 - 3 / (a + 5) + (1 - a) * 0.5)


def test_neg_pow():
    check_op([(3, 4)], lambda a: -a)
    check_op([(3, 4)], lambda a: a ** 3)
    check_op([(3, 4)], lambda a: a ** 0.5, low=0.5)
    check_op([(3, 4), (4,)], lambda a, b: a ** b, low=0.5)
    check_op([(3,)], lambda a: 2 ** a)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)),
                                   ((3, 4), (4,)), ((2, 3, 4), (2, 4, 2)),
                                   ((5, 2, 3, 4), (1, 4, 2)), ((4,), (4,)),
                                   ((4,), (2, 4, 3)), ((2, 3, 4), (4,))], ids=str)
def test_matmul(sa, sb):
    check_op([sa, sb], lambda a, b: a @ b)


@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
def test_reductions(op, axis, keepdims):
    def mg_fn(a):
        return getattr(a, op)(axis=axis, keepdims=keepdims)

    def t_fn(a):
        dim = tuple(range(a.ndim)) if axis is None else axis
        f = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax}[op]
        return f(a, dim=dim, keepdim=keepdims)

    check_op([(2, 3, 4)], mg_fn, t_fn)


def test_max_ties_share_gradient_like_amax():
    a = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    x, t = mg.Tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    x.max(axis=1).sum().backward()
    torch.amax(t, dim=1).sum().backward()
    np.testing.assert_allclose(x.grad, t.grad.numpy())


def test_shape_ops():
    check_op([(2, 3, 4)], lambda a: a.reshape(4, 6), lambda a: a.reshape(4, 6))
    check_op([(2, 3, 4)], lambda a: a.reshape(-1), lambda a: a.reshape(-1))
    check_op([(2, 3, 4)], lambda a: a.transpose(2, 0, 1), lambda a: a.permute(2, 0, 1))
    check_op([(3, 4)], lambda a: a.T, lambda a: a.T)
    check_op([(2, 3, 4)], lambda a: a.flatten(1), lambda a: a.flatten(1))


@pytest.mark.parametrize("idx", [(1,), (slice(0, 2),), (slice(None), 2),
                                 (np.array([0, 2, 2, 1]),),
                                 (np.array([0, 1, 1]), np.array([3, 0, 0])),
                                 (Ellipsis, slice(1, 3))], ids=str)
def test_indexing(idx):
    def t_fn(a):
        tidx = tuple(torch.as_tensor(i) if isinstance(i, np.ndarray) else i for i in idx)
        return a[tidx]

    check_op([(3, 4)], lambda a: a[idx], t_fn)


def test_elementwise_functions():
    check_op([(3, 4)], lambda a: a.exp(), torch.exp)
    check_op([(3, 4)], lambda a: a.log(), torch.log, low=0.1)
    check_op([(3, 4)], lambda a: a.sqrt(), torch.sqrt, low=0.1)
    # relu: keep inputs away from the kink for finite differences
    arr_fn = lambda a: F.relu(a * 1.0)  # noqa: E731
    rng = np.random.default_rng(1)
    a = rng.uniform(0.1, 1, (3, 4)) * rng.choice([-1, 1], (3, 4))
    x, t = mg.Tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    arr_fn(x).sum().backward()
    torch.relu(t).sum().backward()
    np.testing.assert_allclose(x.grad, t.grad.numpy())
    assert gradcheck(arr_fn, [a])


@pytest.mark.parametrize("axis", [-1, 0])
def test_log_softmax(axis):
    check_op([(4, 5)], lambda a: F.log_softmax(a, axis=axis),
             lambda a: torch.log_softmax(a, dim=axis))


def test_cross_entropy_matches_torch_and_is_stable():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, 6)
    check_op([(6, 5)], lambda z: F.cross_entropy(z, target),
             lambda z: torch.nn.functional.cross_entropy(z, torch.tensor(target)))
    # huge logits: no overflow, finite gradient
    z = mg.Tensor(np.array([[1000.0, -1000.0, 0.0], [0.0, 1e4, -1e4]], dtype=np.float32),
                  requires_grad=True)
    loss = F.cross_entropy(z, np.array([0, 2]))
    loss.backward()
    tz = torch.tensor(z.data, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor([0, 2]))
    tl.backward()
    assert np.isfinite(loss.item()) and np.all(np.isfinite(z.grad))
    np.testing.assert_allclose(loss.item(), tl.item(), rtol=1e-6)
    np.testing.assert_allclose(z.grad, tz.grad.numpy(), atol=1e-7)


def test_linear_fused_matches_torch():
    check_op([(5, 3), (4, 3), (4,)], F.linear, torch.nn.functional.linear)
    check_op([(2, 5, 3), (4, 3)], F.linear, torch.nn.functional.linear)


def test_shared_subexpression_gradients_add_up():
    check_op([(3,)], lambda a: a * a + a.exp() * a)


def test_deep_chain_no_recursion_limit():
    x = mg.Tensor(np.ones(3), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, np.ones(3))


def test_gradients_accumulate_until_zero_grad():
    x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 6.0])
    x.zero_grad()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


def test_backward_twice_on_same_graph_counts_once_per_call():
    x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    y.backward()
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])


def test_no_grad_and_detach():
    x = mg.Tensor(np.ones(2), requires_grad=True)
    with mg.no_grad():
        y = x * 2
    assert not y.requires_grad and y.is_leaf
    assert mg.is_grad_enabled()
    z = (x * 2).detach()
    assert not z.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_dtypes_float32_default_float64_kept():
    assert mg.Tensor([1.0, 2.0]).dtype == np.float32
    assert mg.Tensor(1.5).dtype == np.float32
    assert mg.Tensor(np.zeros(2)).dtype == np.float64
    a = mg.Tensor(np.zeros(2, np.float32), requires_grad=True)
    assert (a * 2.5 + 1).dtype == np.float32
    (a * 2.5).sum().backward()
    assert a.grad.dtype == np.float32
    b = mg.Tensor(np.zeros(2), requires_grad=True)
    assert (b * 2.5).dtype == np.float64


def test_matmul_shape_mismatch_names_op_and_shapes():
    a, b = mg.Tensor(np.zeros((2, 3))), mg.Tensor(np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"matmul.*\(2, 3\).*\(4, 5\)"):
        a @ b


def test_backward_on_non_scalar_needs_gradient():
    x = mg.Tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match=r"backward.*scalar.*\(2, 3\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"backward.*\(3,\).*\(2, 3\)"):
        y.backward(np.ones(3))
    y.backward(np.ones((2, 3)))
    np.testing.assert_array_equal(x.grad, 2 * np.ones((2, 3)))


def test_reshape_and_linear_errors_name_shapes():
    with pytest.raises(ValueError, match=r"reshape.*\(2, 3\).*\(4, 2\)"):
        mg.Tensor(np.zeros((2, 3))).reshape(4, 2)
    with pytest.raises(ValueError, match=r"linear.*\(2, 3\).*\(4, 5\)"):
        F.linear(mg.Tensor(np.zeros((2, 3))), mg.Tensor(np.zeros((4, 5))))
    with pytest.raises(ValueError, match=r"cross_entropy.*\(2, 3\).*\(3,\)"):
        F.cross_entropy(mg.Tensor(np.zeros((2, 3))), np.zeros(3, dtype=np.int64))


def test_gradcheck_catches_a_wrong_gradient():
    def bad(a):  # forward a*a but claims gradient a (should be 2a)
        out = mg.Tensor._make(a.data * a.data, (a,), lambda g: (g * a.data,), "bad")
        return out

    with pytest.raises(AssertionError, match="gradcheck: input 0"):
        gradcheck(bad, [np.array([1.0, 2.0, 3.0])])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_gradient_keeps_the_input_dtype(dtype):
    """The tie count is an integer array; dividing by it must not promote to float64."""
    x = mg.Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], dtype=dtype), requires_grad=True)
    y = x.max(axis=1)
    for g in y._backward(np.ones(2, dtype)):  # the op's own gradient, before any cast
        assert g.dtype == dtype
    y.sum().backward()
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_vector_dot_vector_backward():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([4.0, -5.0, 6.0])
    x, y = mg.Tensor(a, requires_grad=True), mg.Tensor(b, requires_grad=True)
    out = x @ y
    assert out.shape == () and out.item() == pytest.approx(12.0)
    out.backward()
    np.testing.assert_array_equal(x.grad, b)
    np.testing.assert_array_equal(y.grad, a)


@pytest.mark.parametrize("op,fn", [("add", lambda a, b: a + b), ("sub", lambda a, b: a - b),
                                   ("mul", lambda a, b: a * b), ("div", lambda a, b: a / b),
                                   ("pow", lambda a, b: a ** b)])
def test_broadcast_mismatch_names_op_and_shapes(op, fn):
    a, b = mg.Tensor(np.ones((2, 3))), mg.Tensor(np.ones((4, 5)))
    with pytest.raises(ValueError, match=rf"{op}: shapes \(2, 3\) and \(4, 5\) cannot be "
                                         "broadcast"):
        fn(a, b)
    with pytest.raises(ValueError, match=rf"{op}: shapes \(2, 3\) and \(4,\)"):
        fn(a, np.ones(4))  # an array operand too


def test_backward_returning_too_few_gradients_is_an_error():
    a = mg.Tensor(np.ones(3), requires_grad=True)
    b = mg.Tensor(np.ones(3), requires_grad=True)
    out = mg.Tensor._make(a.data * b.data, (a, b), lambda g: (g * b.data,), "short")
    with pytest.raises(RuntimeError, match=r"backward of short: returned 1 gradients for 2 "
                                           r"inputs"):
        out.sum().backward()
    wrong = mg.Tensor._make(a.data * 2, (a,), lambda g: (g[:2],), "wrong_shape")
    with pytest.raises(RuntimeError, match=r"wrong_shape.*\(2,\).*\(3,\)"):
        wrong.sum().backward()


def test_mixed_dtype_gradients_keep_each_input_dtype():
    a = mg.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    b = mg.Tensor(np.ones(3, np.float64), requires_grad=True)
    (a * b + a).sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64


@pytest.mark.parametrize("bad", [-1, 5, 7])
def test_cross_entropy_rejects_labels_out_of_range(bad):
    z = mg.Tensor(np.zeros((3, 5)), requires_grad=True)
    labels = np.array([0, bad, 2])
    with pytest.raises(ValueError, match=rf"cross_entropy: class labels must lie in \[0, 4\] "
                                         rf"for logits \(3, 5\); targets \(3,\) hold {bad}"):
        F.cross_entropy(z, labels)
    with pytest.raises(IndexError):  # PyTorch refuses the same labels
        torch.nn.functional.cross_entropy(torch.zeros(3, 5), torch.tensor(labels))


def test_leaf_gradients_are_writeable_and_never_shared():
    a = mg.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    b = mg.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    (a + b).sum().backward()
    assert a.grad is not b.grad and not np.shares_memory(a.grad, b.grad)
    assert a.grad.flags.writeable and b.grad.flags.writeable  # sum's grad is a broadcast view
    a.grad *= 2.0                                             # an in-place update of one ...
    np.testing.assert_array_equal(b.grad, np.ones((2, 3), np.float32))  # ... leaves the other
    g = np.full((2, 3), 3.0, np.float32)
    a.grad = None
    a.backward(g)
    assert not np.shares_memory(a.grad, g)                    # the caller's array is not kept
