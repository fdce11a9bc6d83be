"""LeNet5 and ResNetSmall: their gradients against the same networks in PyTorch, and short
training runs on real MNIST that must reach well above chance."""
import time

import numpy as np
import pytest

import minigrad as mg
from minigrad import functional as F
from minigrad import optim
from minigrad.data.transforms import mnist_normalize
from minigrad.models import MNIST_MODELS, LeNet5, MnistCNN, ResNetSmall

torch = pytest.importorskip("torch")
tnn = torch.nn


class TorchLeNet5(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = tnn.Conv2d(6, 16, 5)
        self.pool = tnn.AvgPool2d(2)
        self.fc1, self.fc2, self.fc3 = tnn.Linear(400, 120), tnn.Linear(120, 84), tnn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(torch.tanh(self.conv1(x)))
        x = self.pool(torch.tanh(self.conv2(x))).flatten(1)
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class TorchBlock(tnn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                           tnn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class TorchResNetSmall(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        self.layer1 = TorchBlock(16, 16)
        self.layer2 = TorchBlock(16, 32, 2)
        self.layer3 = TorchBlock(32, 64, 2)
        self.fc = tnn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.layer3(self.layer2(self.layer1(x))).mean(dim=(2, 3)))


def test_mnist_models_mapping():
    assert MNIST_MODELS == {"cnn": MnistCNN, "lenet5": LeNet5, "resnet": ResNetSmall}
    for cls in MNIST_MODELS.values():
        assert cls(algo="kn2row").conv1.algo == "kn2row"  # every MNIST model takes algo


@pytest.mark.parametrize("name", ["lenet5", "resnet"])
def test_model_matches_torch_train_and_eval(name):
    """Loss and every parameter's gradient in training mode, then the outputs in evaluation
    mode (BatchNorm's running statistics) after one training forward."""
    mg.manual_seed(0)
    model = MNIST_MODELS[name]()
    tmodel = {"lenet5": TorchLeNet5, "resnet": TorchResNetSmall}[name]()
    assert list(model.state_dict()) == list(tmodel.state_dict())  # names and order
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(0)
    x, labels = mnist_normalize((rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
                                 rng.integers(0, 10, 6)))
    loss = F.cross_entropy(model(mg.Tensor(x)), labels)
    loss.backward()
    tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)),
                                              torch.from_numpy(labels))
    tloss.backward()
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-5)
    tparams = dict(tmodel.named_parameters())
    for pname, p in model.named_parameters():
        assert p.grad.dtype == np.float32
        np.testing.assert_allclose(p.grad, tparams[pname].grad.numpy(), rtol=1e-3, atol=1e-5,
                                   err_msg=pname)
    tstate = tmodel.state_dict()
    for k, v in model.state_dict().items():  # running statistics moved the same way
        np.testing.assert_allclose(v, tstate[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    model.eval()
    tmodel.eval()
    with mg.no_grad(), torch.no_grad():
        np.testing.assert_allclose(model(mg.Tensor(x)).data,
                                   tmodel(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.mnist
@pytest.mark.parametrize("name,n_train", [("lenet5", 5000), ("resnet", 3000)])
def test_model_learns_mnist(name, n_train):
    """Two epochs on a few thousand training images (Adam, batches of 32, the second epoch at
    a tenth of the learning rate); at least 88% on the first 1,000 test images in evaluation
    mode (chance is 10%). ResNetSmall costs ~6x LeNet5 per image, so it sees fewer.

    Why the slower second epoch: BatchNorm's running statistics average the last ~10
    batches, so while Adam still moves the weights fast they describe a network a few steps
    old, and evaluation-mode accuracy can trail training-mode accuracy by 10-30 points
    (PyTorch's does the same: 0.84-0.92 against 0.94 at a constant 2e-3 on this data)."""
    from minigrad.data.mnist import load_mnist

    X_train, y_train, X_test, y_test = load_mnist(download=False)
    xtr, ytr = mnist_normalize((X_train[:n_train], y_train[:n_train]))
    xte, yte = mnist_normalize((X_test[:1000], y_test[:1000]))
    mg.manual_seed(0)
    model = MNIST_MODELS[name]()
    opt = optim.Adam(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for lr in (2e-3, 2e-4):
        opt.lr = lr
        order = rng.permutation(len(xtr))
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            loss = F.cross_entropy(model(mg.Tensor(xtr[idx])), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with mg.no_grad():
        pred = np.concatenate([model(mg.Tensor(xte[i:i + 250])).data.argmax(axis=1)
                               for i in range(0, len(xte), 250)])
    accuracy = float((pred == yte).mean())
    print(f"{name}: test accuracy {accuracy:.3f} after two epochs of {n_train} images "
          f"({seconds:.1f} s)")
    assert accuracy > 0.88
