r"""Tensor slicing (spatial split with halo exchange, as in Sousa et al.): every worker holds
a band of rows of every feature map, (batch, C, its rows (+ halo), W), and the whole weights.

Who holds what, for the MNIST CNN on N = 2 workers (bands planned from the last map up, so
that no pooling window straddles two workers: 7 rows -> 4 + 3, x2 -> 8 + 6, x2 -> 16 + 12):

                       worker 0                         worker 1
    weights, momentum  all of them (replicated)          all of them (replicated)
    input              rows 0..15 of x                   rows 16..27
      ~~~~~~~~~~ halo exchange: 1 row each way (KH//2 for a 3x3 conv) ~~~~~~~~~~   [h]
    conv1 (pad 1)      rows -1..16 -> out rows 0..15     rows 15..28 -> out rows 16..27
    pool 2, relu       rows 0..7  (14-row map)           rows 8..13
      ~~~~~~~~~~ halo exchange ~~~~~~~~~~                                          [h]
    conv2, pool, relu  rows 0..3  (7-row map)            rows 4..6
      ======= allgather of the bands along rows: the whole (B,64,7,7) map ======= [g]
    fc1, fc2, fc3      replicated: the same dense head on every worker, the same loss
    conv dW, db        ======= allreduce (sum of the bands' partial dW) =======    [a]

Forward: before each convolution a worker sends the rows its neighbours' windows reach into
(point-to-point send/recv of KH//2 rows each way for a "same" conv, never a gather of the
whole map), stacks [halo from above | my band | halo from below] into a slab, with zero
rows where the slab passes the image's edge (the conv's row padding), and convolves the
slab with the whole weights and padding only along the width. Pooling and the elementwise
ops run on the band as it is.

Backward: [h] conv backward on the slab gives dX for the slab's rows; the halo rows' parts
are sent back to the workers that own them and added into their rows (and theirs into
mine). [g] the head is replicated, so the gradient of the gathered map is whole on every
worker: keep my rows. [a] every worker's dW covers only its output rows: one allreduce of
the convolutions' dW and db sums them. The dense head's gradients are computed alike on
every worker, so they need no communication.

Which output rows are mine. Output row o of a convolution belongs to the worker whose band
holds its window's centre row, o*stride - padding + KH//2. With that rule any band
boundaries work for any stride and padding; `plan_bands` picks them so that the last map is
split evenly and every pooling window lies inside one band. Supported set, checked with
clear errors: convolutions of any kernel, stride and padding (every worker must own at
least one output row); max or average pooling with stride == kernel (non-overlapping
windows) and no row padding, whose band boundaries fall on multiples of the pool size
(`plan_bands` ensures it; a map of odd height loses its last row to the pool, which the
last band keeps); ReLU, tanh, sigmoid between them; after the first Flatten, a replicated
head. A band must be at least one row of the last map: N <= 7 for the MNIST CNN.

Per step and worker: KH//2 rows of each conv's input to each neighbour forward and their
gradients back (`halo_bytes`; the first conv's input, the data, needs no gradient), the
band of the last map (allgather), and an allreduce of the conv weights' gradients.
Activation memory per worker is about 1/N of the feature maps, plus the slabs (band and
halo, padded) and the replicated head (`activation_bytes_per_worker`); parameters and
optimizer state are not split.

When it pays. Slicing divides activations, the work of every conv, and its memory by N,
and sends only halo rows, whose size does not depend on the height: so it pays for big
images (high-resolution inputs and early layers, where activations dwarf the weights) and
when a worker cannot hold a whole feature map. It pays little on small maps (7x7: a 1-row
halo is a seventh of the map) and for big layers, whose weights every worker keeps and
whose gradients are allreduced in full: those want the filter split (`model_parallel.py`).

    summary = train_tensor_slicing(MnistCNN(), (X, y), (X_test, y_test), workers=2,
                                   epochs=2, batch_size=64, lr=0.05, optimizer="sgd",
                                   transform=mnist_normalize)

Checkpoints (`save=`, `resume=`): the weights and optimizer state are whole on every
worker, so rank 0's are written after each epoch, as sync's are (`checkpoint.save_split`);
a run may resume with another number of workers (new bands, the same weights).
"""
import math

import numpy as np

from .. import functional as F
from .. import nn
from ..tensor import Tensor
from .model_parallel import gather, layer_sequence, train_split

TAG_HALO = 1310       # halo rows, forward
TAG_HALO_GRAD = 1311  # their gradients, backward

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid)
POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def _pair(v):
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


# ------------------------------------------------------------------------------ bands
def even_bands(height, parts):
    """`parts` bands of nearly equal height covering rows 0..height-1, as (start, stop)."""
    sizes = [height // parts + (1 if r < height % parts else 0) for r in range(parts)]
    starts = [0, *np.cumsum(sizes).tolist()]
    return [(starts[r], starts[r + 1]) for r in range(parts)]


def conv_rows(conv):
    """(KH, stride, padding) along the rows of a Conv2d."""
    return conv.kernel_size[0], _pair(conv.stride)[0], _pair(conv.padding)[0]


def conv_out_bands(bands, height, kh, stride, padding):
    """Each worker's output rows of a convolution whose input rows are split as `bands`:
    row o goes to the worker whose band holds o*stride - padding + kh//2 (its window's
    centre). Returns (out bands, output height)."""
    ho = (height + 2 * padding - kh) // stride + 1
    starts = [0] + [min(max(math.ceil((lo + padding - kh // 2) / stride), 0), ho)
                    for lo, _ in bands[1:]]
    return list(zip(starts, starts[1:] + [ho], strict=True)), ho


def rows_needed(out_band, kh, stride, padding):
    """The input rows [a, b) an output band's windows read; a < 0 or b > H are padding."""
    o0, o1 = out_band
    return o0 * stride - padding, (o1 - 1) * stride - padding + kh


def pool_out_bands(bands, height, layer):
    """Each worker's output rows of a non-overlapping pool; refuses a band boundary that
    would cut a window in two."""
    (kh, _), (sh, _) = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
    if sh != kh or _pair(getattr(layer, "padding", 0))[0] != 0:
        raise ValueError(f"tensor slicing: {layer!r} must have stride == kernel and no row "
                         "padding (non-overlapping windows, so no halo is needed)")
    cut = [lo for lo, _ in bands[1:] if lo % kh]
    if cut:
        raise ValueError(f"tensor slicing: band boundaries {cut} cut {kh}-row pooling windows "
                         f"(bands {bands}); plan the bands with plan_bands")
    ho = (height - kh) // kh + 1
    starts = [lo // kh for lo, _ in bands]
    return list(zip(starts, starts[1:] + [ho], strict=True)), ho


def spatial_part(layers):
    """(the layers before the first Flatten, the rest): the sliced part and the head."""
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Flatten):
            return layers[:i], layers[i:]
    return layers, []


def plan_bands(layers, height, parts):
    """Input bands such that the last feature map is split evenly (every worker gets at
    least one row) and every pooling window lies inside one band: walk the layers back
    from the last map, multiplying boundaries by each pool's size and moving them through
    each conv to the centre row of the window (the rule of `conv_out_bands`)."""
    spatial, _ = spatial_part(layers)
    heights = [height]
    for layer in spatial:
        h = heights[-1]
        if isinstance(layer, nn.Conv2d):
            kh, s, p = conv_rows(layer)
            h = (h + 2 * p - kh) // s + 1
        elif isinstance(layer, POOLS):
            kh = _pair(layer.kernel_size)[0]
            h = (h - kh) // _pair(layer.stride or layer.kernel_size)[0] + 1
        heights.append(h)
    if heights[-1] < parts:
        raise ValueError(f"tensor slicing: the last feature map has {heights[-1]} rows, too "
                         f"few for {parts} workers (each needs at least one)")
    bounds = [lo for lo, _ in even_bands(heights[-1], parts)[1:]]
    for layer, h_in in zip(reversed(spatial), reversed(heights[:-1]), strict=True):
        if isinstance(layer, nn.Conv2d):
            kh, s, p = conv_rows(layer)
            bounds = [min(max(o * s - p + kh // 2, 0), h_in) for o in bounds]
        elif isinstance(layer, POOLS):
            bounds = [o * _pair(layer.kernel_size)[0] for o in bounds]
    starts = [0, *bounds]
    return list(zip(starts, starts[1:] + [height], strict=True))


# ---------------------------------------------------------------------- halo exchange
def _overlap(band, need, height):
    lo, hi = max(band[0], need[0], 0), min(band[1], need[1], height)
    return (lo, hi) if lo < hi else None


def halo_exchange(x, comm, bands, needs, height, count=None):
    """Autograd node: my slab, input rows needs[me] = [a, b) of the whole map, built from my
    band x (rows bands[me]), the rows other workers send me, and zero rows outside 0..H-1.

    forward   send each worker the rows of my band its windows read; receive mine
    backward  send each worker the gradient of the rows it lent me; add into my band's
              gradient what the others send back for the rows I lent them (rank order)
    `count(nbytes)` is told the size of every message sent (the halo byte counter).
    """
    r = comm.rank
    lo, _ = bands[r]
    a, b = needs[r]
    n, c, _, w = x.shape
    count = count or (lambda nbytes: None)

    def send(array, q, tag):
        array = np.ascontiguousarray(array)
        count(array.nbytes)
        comm.send(array, q, tag)

    for q in range(comm.size):  # sends first: they never block, so no deadlock
        ov = _overlap(bands[r], needs[q], height) if q != r else None
        if ov is not None:
            send(x.data[:, :, ov[0] - lo:ov[1] - lo], q, TAG_HALO)
    slab = np.zeros((n, c, b - a, w), dtype=x.dtype)
    for q in range(comm.size):
        ov = _overlap(bands[q], needs[r], height)
        if ov is None:
            continue
        rows = ov[1] - ov[0]
        piece = (x.data[:, :, ov[0] - lo:ov[1] - lo] if q == r else
                 comm.recv(source=q, tag=TAG_HALO, dtype=x.dtype).reshape(n, c, rows, w))
        slab[:, :, ov[0] - a:ov[1] - a] = piece

    def backward(g):
        for q in range(comm.size):
            ov = _overlap(bands[q], needs[r], height) if q != r else None
            if ov is not None:
                send(g[:, :, ov[0] - a:ov[1] - a], q, TAG_HALO_GRAD)
        dx = np.zeros(x.shape, dtype=g.dtype)
        for q in range(comm.size):
            ov = _overlap(bands[r], needs[q], height)
            if ov is None:
                continue
            rows = ov[1] - ov[0]
            piece = (g[:, :, ov[0] - a:ov[1] - a] if q == r else
                     comm.recv(source=q, tag=TAG_HALO_GRAD, dtype=g.dtype).reshape(
                         n, c, rows, w))
            dx[:, :, ov[0] - lo:ov[1] - lo] += piece
        return (dx,)

    return Tensor._make(slab, (x,), backward, "halo_exchange")


# ----------------------------------------------------------------------- sliced layers
def sliced_conv2d(conv, x, comm, bands, height, algo=None, count=None):
    """A Conv2d (whole weights) on my band x of an input of `height` rows split as `bands`.
    Returns (my band of the output, the output's bands, its height)."""
    kh, s, p = conv_rows(conv)
    out_bands, ho = conv_out_bands(bands, height, kh, s, p)
    empty = [q for q, (o0, o1) in enumerate(out_bands) if o1 <= o0]
    if empty:
        raise ValueError(f"tensor slicing: workers {empty} own no output row of {conv!r} "
                         f"(input bands {bands}, {ho} output rows); use fewer workers or "
                         "plan_bands")
    needs = [rows_needed(ob, kh, s, p) for ob in out_bands]
    slab = halo_exchange(x, comm, bands, needs, height, count)
    y = F.conv2d(slab, conv.weight, conv.bias, stride=(s, _pair(conv.stride)[1]),
                 padding=(0, _pair(conv.padding)[1]), algo=algo or conv.algo)
    return y, out_bands, ho


def sliced_pool(layer, x, bands, height):
    out_bands, ho = pool_out_bands(bands, height, layer)
    return layer(x), out_bands, ho


def allreduce_grads(comm, params):
    """Sum every worker's gradient of `params` (one flat allreduce, in the params' dtype)."""
    if comm.size == 1:
        return
    grads = [p.grad if p.grad is not None else np.zeros_like(p.data) for p in params]
    flat = comm.allreduce(np.concatenate([g.ravel() for g in grads]))
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.size].reshape(p.shape).astype(p.data.dtype, copy=False)
        offset += p.size


class TensorSliced(nn.Module):
    """One worker's view of a network with its feature maps split into bands of rows.

    `forward(x)` takes the whole batch (the worker keeps its band) and returns the whole
    logits, the same on every worker. `parameters()` are the whole model's (replicated);
    call `after_backward()` between backward and the optimizer step (the dW allreduce).
    """

    def __init__(self, model, comm, algo=None):
        super().__init__()
        self.comm, self.algo, self.model = comm, algo, model
        self.spatial, self.head = spatial_part(layer_sequence(model))
        self.convs = [m for m in self.spatial if isinstance(m, nn.Conv2d)]
        if not self.convs:
            raise ValueError("tensor slicing splits feature maps: the model has no Conv2d")
        for layer in self.spatial:
            if not isinstance(layer, (nn.Conv2d, *POOLS, *ELEMENTWISE)):
                raise ValueError(f"tensor slicing: cannot slice {type(layer).__name__} "
                                 "before the first Flatten")
        self.halo_bytes = 0
        self._plans = {}

    def _count(self, nbytes):
        self.halo_bytes += nbytes

    def bands(self, height):
        if height not in self._plans:
            self._plans[height] = plan_bands(self.spatial, height, self.comm.size)
        return self._plans[height]

    def forward(self, x):
        height = x.shape[2]
        bands = self.bands(height)
        lo, hi = bands[self.comm.rank]
        x = x[:, :, lo:hi]
        for layer in self.spatial:
            if isinstance(layer, nn.Conv2d):
                x, bands, height = sliced_conv2d(layer, x, self.comm, bands, height,
                                                 self.algo, self._count)
            elif isinstance(layer, POOLS):
                x, bands, height = sliced_pool(layer, x, bands, height)
            else:
                x = layer(x)
        x = gather(x, self.comm, [b - a for a, b in bands], axis=2, grad="slice")
        for layer in self.head:
            x = layer(x)
        return x

    def after_backward(self):
        allreduce_grads(self.comm, [p for conv in self.convs for p in conv.parameters()])

    def assemble(self, model):
        """The weights are whole on every worker already (and `model` is the one trained)."""
        return model

    def shards(self, model):
        """(my parameter, the parameter of `model` it is, None: not split) for each one:
        the weights are replicated, so a checkpoint takes rank 0's, as sync's does."""
        mine = {id(p) for p in self.parameters()}
        for p in model.parameters():
            if id(p) not in mine:
                raise ValueError("TensorSliced.shards: `model` is not the model this "
                                 "network was built on")
            yield p, p, None


def train_tensor_slicing(model, train_data, test_data, *, comm="threads", workers=2,
                         epochs=1, batch_size=64, lr=0.05, optimizer="sgd", momentum=0.9,
                         seed=0, transform=None, eval_transform=None, eval_limit=None,
                         log=None, algo=None, cores=None, save=None, resume=None,
                         faults=None, task=None):
    """Train `model` with its feature maps split into bands over `workers` ranks (threads)
    or the ranks of `mpiexec` (comm="mpi"). Leaves the trained weights in `model`; returns
    the summary on rank 0 (None on the other MPI ranks). `eval_transform`: the test set's
    (default: `transform`); `algo`: every conv's lowering (default: each layer's own);
    `save`, `resume`, `faults`, `task`: as in `model_parallel.train_split`."""
    return train_split("tensor-slicing", lambda c, m: TensorSliced(m, c, algo), model,
                       train_data, test_data, comm=comm, workers=workers, epochs=epochs,
                       batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
                       seed=seed, transform=transform, eval_transform=eval_transform,
                       eval_limit=eval_limit, log=log, cores=cores, save=save,
                       resume=resume, faults=faults, task=task)
