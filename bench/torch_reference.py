"""The PyTorch reference: the same models, initial weights, optimizers and batches.

Weights are copied from a minigrad model by name (minigrad's parameter names follow
PyTorch's), and PyTorch is fed from minigrad's own DataLoader, so both engines see the same
numbers in the same order and any difference in time or accuracy is the engine's.
"""
import time

import numpy as np
import torch
from torch import nn


class TorchIrisMLP(nn.Sequential):
    def __init__(self, in_features=4, hidden=50, classes=3):
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class TorchMnistCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def copy_weights(torch_model, minigrad_model):
    """Load minigrad's parameters into the torch model (names must match)."""
    state = {k: torch.from_numpy(np.array(v)) for k, v in minigrad_model.state_dict().items()}
    torch_model.load_state_dict(state, strict=True)
    return torch_model


def make_optimizer(name, params, lr, momentum=0.9):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}")


def evaluate(model, X, y, batch_size=1000, transform=None):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            xb, yb = X[i:i + batch_size], y[i:i + batch_size]
            if transform is not None:
                xb, yb = transform((xb, yb))
            pred = model(torch.from_numpy(np.ascontiguousarray(xb))).argmax(1).numpy()
            correct += int((pred == yb).sum())
    model.train()
    return correct / len(X)


def fit(model, optimizer, loader, test_data, epochs, eval_transform=None):
    """The same loop as minigrad.train.fit, in PyTorch; returns the same summary keys."""
    loss_fn = nn.CrossEntropyLoss()
    train_seconds, losses = 0.0, []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        for xb, yb in loader:
            x, y = torch.from_numpy(xb), torch.from_numpy(yb)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        train_seconds += time.perf_counter() - t0
    test_acc = evaluate(model, *test_data, transform=eval_transform)
    return {"epochs": epochs, "test_accuracy": test_acc, "train_seconds": train_seconds,
            "seconds_per_epoch": train_seconds / epochs, "losses": losses}
