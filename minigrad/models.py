"""The seed experiments' networks."""
from . import nn


class IrisMLP(nn.Sequential):
    """4 -> 50 -> ReLU -> 3: the seed's iris classifier."""

    def __init__(self, in_features=4, hidden=50, classes=3):
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class MnistCNN(nn.Module):
    """The seed's MNIST CNN: conv 1->32 3x3 pad 1, ReLU, 2x2 max-pool, conv 32->64 3x3 pad 1,
    ReLU, 2x2 max-pool, then 3136 -> 128 -> 64 -> 10 with ReLU. Input (N, 1, 28, 28),
    normalised with mean 0.1307 and std 0.3081 (`minigrad.data.transforms.mnist_normalize`)."""

    def __init__(self, algo=None):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1, algo=algo)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, algo=algo)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        # The seed's order is conv, ReLU, max-pool. ReLU is monotone, so it commutes with a
        # max: relu(maxpool(z)) == maxpool(relu(z)), values and gradients alike (the window's
        # maximum is positive exactly when some element is). Pooling first gives ReLU a
        # quarter of the elements to touch, forward and backward.
        x = self.pool(self.conv1(x)).relu()
        x = self.pool(self.conv2(x)).relu()
        x = x.flatten(1)
        x = self.fc1(x).relu()
        x = self.fc2(x).relu()
        return self.fc3(x)
