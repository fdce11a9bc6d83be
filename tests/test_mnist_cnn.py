"""The seed MNIST CNN against PyTorch, and short MNIST training runs (real data, no network:
marked `mnist`, skipped where the files are missing)."""
import json

import numpy as np
import pytest

import minigrad as mg
from minigrad import cli, kernels
from minigrad import functional as F
from minigrad.data.transforms import mnist_normalize
from minigrad.models import MnistCNN

torch = pytest.importorskip("torch")
ref = pytest.importorskip("bench.torch_reference")


@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_cnn_forward_and_gradients_match_torch(algo):
    mg.manual_seed(1)
    model = MnistCNN(algo=algo)
    tmodel = ref.copy_weights(ref.TorchMnistCNN(), model)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 4)
    x, _ = mnist_normalize((images, labels))
    loss = F.cross_entropy(model(mg.Tensor(x)), labels)
    loss.backward()
    tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)),
                                              torch.from_numpy(labels))
    tloss.backward()
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-5)
    tparams = dict(tmodel.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, tparams[name].grad.numpy(), rtol=2e-4, atol=2e-6,
                                   err_msg=f"{algo}: {name}")


def test_mnist_normalize_matches_the_seed_constants():
    images = np.array([[[0, 255] * 14] * 28], dtype=np.uint8)
    x, _ = mnist_normalize((images, np.zeros(1, np.int64)))
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0, :2], [(0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081],
                               rtol=1e-6)


def _summary(out):
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.mnist
def test_short_mnist_run_learns(capsys):
    """3,000 training images, one epoch: the CNN must reach 85% on the 10,000 test images."""
    code = cli.main(["train", "mnist", "--limit", "3000", "--epochs", "1", "--json",
                     "--seed", "0"])
    s = _summary(capsys.readouterr().out)
    assert code == 0 and s["task"] == "mnist" and s["epochs"] == 1
    assert s["test_accuracy"] >= 0.85
    assert 0.0 <= s["loader_wait_share"] < 1.0


@pytest.mark.mnist
def test_mnist_resume_ends_at_uninterrupted_parameters(tmp_path, capsys):
    full, part = tmp_path / "full.npz", tmp_path / "part.npz"
    args = ["train", "mnist", "--limit", "384", "--batch-size", "64", "--json"]
    cli.main(args + ["--epochs", "2", "--save", str(full)])
    cli.main(args + ["--epochs", "1", "--save", str(part)])
    cli.main(args + ["--epochs", "2", "--resume", str(part), "--save", str(part)])
    capsys.readouterr()
    a, b = np.load(full), np.load(part)
    for k in a.files:
        if k.startswith(("model/", "optim/")):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
