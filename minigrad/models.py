"""The networks `minigrad train` knows: the seed experiments' IrisMLP and MnistCNN, and two
classics for MNIST, LeNet5 (tanh, average pooling) and ResNetSmall (residual blocks with
batch norm). Every MNIST model takes `algo`, the convolution lowering of its conv layers.
"""
from __future__ import annotations

from . import nn
from .tensor import Tensor


class IrisMLP(nn.Sequential):
    """4 -> 50 -> ReLU -> 3: the seed's iris classifier."""

    def __init__(self, in_features: int = 4, hidden: int = 50, classes: int = 3):
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class MnistCNN(nn.Module):
    """The seed's MNIST CNN: conv 1->32 3x3 pad 1, ReLU, 2x2 max-pool, conv 32->64 3x3 pad 1,
    ReLU, 2x2 max-pool, then 3136 -> 128 -> 64 -> 10 with ReLU. Input (N, 1, 28, 28),
    normalised with mean 0.1307 and std 0.3081 (`minigrad.data.transforms.mnist_normalize`)."""

    def __init__(self, algo: str | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1, algo=algo)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, algo=algo)
        self.pool = nn.MaxPool2d(2, relu=True)  # max-pool, then ReLU, in one kernel
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        # The seed's order is conv, ReLU, max-pool. ReLU is monotone, so it commutes with a
        # max: relu(maxpool(z)) == maxpool(relu(z)), values and gradients alike (the window's
        # maximum is positive exactly when some element is). So the ReLU is fused into the
        # pool (self.pool has relu=True): one pass over the conv's output, no ReLU of its own.
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        x = x.flatten(1)
        x = self.fc1(x).relu()
        x = self.fc2(x).relu()
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeCun et al. (1998)'s LeNet-5 for 28x28 MNIST: conv 1->6 5x5 with padding 2 (so the
    28x28 digit is as large as in the paper's padded 32x32 input), tanh, 2x2 average pool,
    conv 6->16 5x5, tanh, 2x2 average pool, then 400 -> 120 -> 84 -> 10 with tanh.
    (The paper's sparse C3 connections and trainable subsampling are simplified to a full
    convolution and plain averaging, as is customary.)"""

    def __init__(self, algo: str | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2, algo=algo)
        self.conv2 = nn.Conv2d(6, 16, 5, algo=algo)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.conv1(x).tanh())  # (N, 6, 14, 14)
        x = self.pool(self.conv2(x).tanh())  # (N, 16, 5, 5)
        x = x.flatten(1)
        x = self.fc1(x).tanh()
        x = self.fc2(x).tanh()
        return self.fc3(x)


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al., 2016): two 3x3 convolutions with batch norm, and the
    input added back before the last ReLU:

        out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))

    When the block changes the shape (stride 2, or more channels) the shortcut is a 1x1
    convolution with that stride and a batch norm; otherwise it is the identity. The convs
    have no bias: the batch norm after each would cancel it."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 algo: str | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                               bias=False, algo=algo)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False,
                               algo=algo)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, algo=algo),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return (out + skip).relu()


class ResNetSmall(nn.Module):
    """A small residual network for MNIST: a 3x3 stem conv 1->16 with batch norm and ReLU,
    three basic blocks (16 at 28x28, 32 at 14x14, 64 at 7x7; the last two halve the size
    with stride 2), global average pooling and a linear 64 -> 10 classifier. About 78k
    parameters."""

    def __init__(self, algo: str | None = None, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(1, w1, 3, padding=1, bias=False, algo=algo)
        self.bn1 = nn.BatchNorm2d(w1)
        self.layer1 = BasicBlock(w1, w1, algo=algo)
        self.layer2 = BasicBlock(w1, w2, stride=2, algo=algo)
        self.layer3 = BasicBlock(w2, w3, stride=2, algo=algo)
        self.fc = nn.Linear(w3, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x)).relu()  # (N, 16, 28, 28)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, 7, 7)
        return self.fc(x.mean(axis=(2, 3)))  # global average pool -> (N, 64) -> (N, 10)


# The models `minigrad train mnist --model NAME` can train.
MNIST_MODELS = {"cnn": MnistCNN, "lenet5": LeNet5, "resnet": ResNetSmall}
