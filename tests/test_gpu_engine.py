"""The engine on a GPU (marked `gpu`: skipped where CuPy or a CUDA device is missing)."""
import numpy as np
import pytest

import minigrad as mg
from minigrad import functional as F
from minigrad.models import IrisMLP, MnistCNN
from minigrad.optim import SGD, Adam

pytestmark = pytest.mark.gpu


def _train(model, opt, batches, device):
    losses = []
    model.to(device)
    for x, y in batches:
        xt = mg.Tensor(x).to(device)
        yt = mg.Tensor(y).to(device).data
        loss = F.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    return np.array(losses), model.state_dict()


@pytest.mark.parametrize("make_opt", [lambda p: Adam(p, lr=1e-3),
                                      lambda p: SGD(p, lr=0.05, momentum=0.9)])
@pytest.mark.parametrize("make_model,shape", [(IrisMLP, (16, 4)), (MnistCNN, (8, 1, 28, 28))])
def test_training_steps_on_gpu_match_cpu(make_model, shape, make_opt):
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal(shape).astype(np.float32),
                rng.integers(0, 3, shape[0])) for _ in range(4)]
    mg.manual_seed(0)
    cpu_model = make_model()
    gpu_model = make_model().load_state_dict(cpu_model.state_dict())
    cpu_losses, cpu_state = _train(cpu_model, make_opt(cpu_model.parameters()), batches, "cpu")
    gpu_losses, gpu_state = _train(gpu_model, make_opt(gpu_model.parameters()), batches, "cuda")
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4, atol=1e-5)
    for k in cpu_state:
        np.testing.assert_allclose(gpu_state[k], cpu_state[k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_tensor_round_trip_and_gradient_flow():
    x = mg.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    y = x.to("cuda")
    assert y.device == "cuda" and x.device == "cpu"
    (y * y).sum().backward()
    assert x.grad is not None and isinstance(x.grad, np.ndarray)
    np.testing.assert_allclose(x.grad, 2 * x.data)
    np.testing.assert_array_equal(y.to("cpu").data, x.data)


def test_mixing_devices_names_both():
    a = mg.Tensor(np.ones((2, 2), np.float32))
    b = mg.Tensor(np.ones((2, 2), np.float32)).to("cuda")
    for op in (lambda: a + b, lambda: b * a, lambda: a @ b):
        with pytest.raises(RuntimeError, match=r"different devices: (cpu|cuda).*(cuda|cpu)"):
            op()
    layer = mg.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="linear: tensors are on different devices"):
        layer(b)
