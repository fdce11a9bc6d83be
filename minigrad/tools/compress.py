"""`minigrad compress CKPT --method tucker2|cp --rank R|--ratio X|--energy E --out NEW`:
replace trained convolutions by cheaper factored ones (tensor decomposition).

A convolution's weight W is a 4-way tensor (M, C, KH, KW): output channels, input channels,
kernel rows, kernel columns. Trained weights are far from full rank across the two channel
modes, so W is close to a tensor built from much smaller factors, and each factor is itself a
convolution: the layer becomes a short chain of cheap convolutions with (nearly) the same
output.

Tucker-2 (Kim et al., ICLR 2016, "Compression of deep convolutional neural networks for fast
and low power mobile applications"): compress the two channel modes only,

    W  ~  K x_1 U_out x_2 U_in     W[m,c,i,j] ~ sum_{r,s} U_out[m,r] K[r,s,i,j] U_in[c,s]

    K (R_out, R_in, KH, KW) the core, U_out (M, R_out), U_in (C, R_in), orthonormal columns.
    As layers:  x --1x1 conv C->R_in (U_in^T)--> --KHxKW conv R_in->R_out (K, the layer's
                stride and padding)--> --1x1 conv R_out->M (U_out, the layer's bias)--> y
    HOSVD: U_out = the R_out leading left singular vectors of the mode-1 unfolding W_(1)
    (M x C*KH*KW), U_in those of W_(2) (C x M*KH*KW); K = W x_1 U_out^T x_2 U_in^T.
    HOOI (higher-order orthogonal iteration) then alternates U_out <- leading vectors of
    (W x_2 U_in^T)_(1) and U_in <- leading vectors of (W x_1 U_out^T)_(2), which never
    increases the error ||W - K x_1 U_out x_2 U_in||.
    Parameters  C*R_in + R_in*R_out*KH*KW + R_out*M  (+ M bias), instead of M*C*KH*KW.

CP (canonical polyadic; Lebedev et al., ICLR 2015, "Speeding-up convolutional neural
networks using fine-tuned CP-decomposition"): a sum of R rank-one tensors,

    W[m,c,i,j]  ~  sum_r  A[m,r] B[c,r] V[i,r] H[j,r]

    As layers:  x --1x1 conv C->R (B^T)--> --KHx1 depthwise (V[:, r] on channel r, stride
                (sh, 1), padding (ph, 0))--> --1xKW depthwise (H[:, r], stride (1, sw),
                padding (0, pw))--> --1x1 conv R->M (A, the layer's bias)--> y
    Fitted by alternating least squares (CP-ALS): for each mode in turn, with the others
    fixed, the factor solves a linear least-squares problem in closed form,
        A <- W_(1) (B (.) V (.) H) (B^T B * V^T V * H^T H)^+     ((.) Khatri-Rao, * Hadamard)
    and the same for B, V and H. The factors start from the leading singular vectors of
    each unfolding. Parameters  R*(C + KH + KW + M)  (+ M bias).

    Depthwise steps. minigrad's conv2d has no groups, so each depthwise step runs as ONE
    ordinary conv2d whose R x R x KH x 1 weight is block-diagonal (the R depthwise filters
    on the diagonal, zeros elsewhere; the zeros are a constant mask, so their gradient is
    dropped and only the R*KH real weights train). It costs R times the depthwise
    multiply-adds (R^2*KH instead of R*KH per output pixel); `flops` reports the
    decomposition's own count, `executed_flops` what minigrad really runs. The KHx1 and 1xKW
    kernels go through the same kernels as every other conv (all take KH != KW).

Choosing the rank (exactly one of):
    rank     explicit: an int (Tucker-2: both ranks; CP: R), or (R_out, R_in) for Tucker-2;
    energy   keep the smallest ranks whose leading squared singular values of the mode-1 /
             mode-2 unfoldings reach this fraction of the total (CP: the larger of the two);
    ratio    the largest ranks with at most 1/ratio of the layer's parameters (weight and
             bias), Tucker-2 keeping R_out / R_in = M / C.

Reloading. A factored model has other parameters than the model it came from
("conv2.weight" becomes "conv2.first.weight", "conv2.core.weight", ...).
`compression_spec(model)` describes which layers are factored with which ranks (JSON-able);
the checkpoint keeps it as the meta value "compression", and `apply_spec(model, spec)` turns
a freshly built, uncompressed model into the same structure, so the checkpoint's state dict
loads into it (`load_compressed`, and `prepare_resume` for `minigrad train --resume`).

FLOPs here are 2 x multiply-adds of one image (bias additions not counted).
"""
from __future__ import annotations

import copy
import json
import sys

import numpy as np

from .. import functional as F
from .. import nn
from ..backend import get_array_module, to_device
from ..tensor import Parameter, Tensor, no_grad

METHODS = ("tucker2", "cp")
SPEC_FORMAT = "minigrad-compression"
SPEC_VERSION = 1


# =========================================================================== tensor algebra


def unfold(t, mode):
    """Mode-`mode` unfolding: (I_mode, product of the other sizes), the others in order."""
    return np.moveaxis(t, mode, 0).reshape(t.shape[mode], -1)


def mode_product(t, mat, mode):
    """t x_mode mat: multiply every mode-`mode` fibre of t by mat (J x I_mode)."""
    return np.moveaxis(np.tensordot(mat, t, axes=(1, mode)), 0, mode)


def _leading(mat, r):
    u, _, _ = np.linalg.svd(mat, full_matrices=False)
    return u[:, :r]


def mode_energy(w, mode):
    """Squared singular values of unfold(w, mode), largest first."""
    return np.linalg.svd(unfold(np.asarray(w, np.float64), mode), compute_uv=False) ** 2


def energy_rank(spectrum, energy):
    """The smallest r whose r leading squared singular values hold `energy` of the total."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must lie in (0, 1], got {energy}")
    cum = np.cumsum(spectrum) / max(float(spectrum.sum()), np.finfo(np.float64).tiny)
    return int(min(len(spectrum), np.searchsorted(cum, energy - 1e-12) + 1))


def tucker2(w, ranks, hooi_iters=2):
    """Tucker-2 of w (M, C, KH, KW): (core (R_out, R_in, KH, KW), U_out (M, R_out),
    U_in (C, R_in)), in float64. HOSVD, then `hooi_iters` HOOI sweeps."""
    w = np.asarray(w, np.float64)
    r_out, r_in = ranks
    u_out, u_in = _leading(unfold(w, 0), r_out), _leading(unfold(w, 1), r_in)
    for _ in range(hooi_iters):
        u_out = _leading(unfold(mode_product(w, u_in.T, 1), 0), r_out)
        u_in = _leading(unfold(mode_product(w, u_out.T, 0), 1), r_in)
    core = mode_product(mode_product(w, u_out.T, 0), u_in.T, 1)
    return core, u_out, u_in


def tucker2_weight(core, u_out, u_in):
    """core x_1 U_out x_2 U_in: the (M, C, KH, KW) weight the three layers compute."""
    return mode_product(mode_product(core, u_out, 0), u_in, 1)


def _khatri_rao(mats):
    """Column-wise Kronecker product, rows in C order of the matrices' row indices."""
    out = mats[0]
    for m in mats[1:]:
        out = (out[:, None, :] * m[None, :, :]).reshape(-1, out.shape[1])
    return out


def cp_weight(factors):
    """sum_r of the outer products of the factors' columns r (one GEMM)."""
    shape = tuple(f.shape[0] for f in factors)
    return (factors[0] @ _khatri_rao(factors[1:]).T).reshape(shape)


def cp_als(t, rank, iters=500, tol=1e-10, seed=0):
    """Rank-`rank` CP of an N-way tensor by alternating least squares, in float64.

    Returns (factors, relative error): factors[n] is (I_n, rank), scaled so that every
    factor's columns have equal norms. Starts from the leading left singular vectors of each
    unfolding (random columns where rank exceeds the mode's size); stops when the relative
    error changes by less than `tol` or after `iters` sweeps.
    """
    t = np.asarray(t, np.float64)
    rng = np.random.default_rng(seed)
    factors = []
    for n, size in enumerate(t.shape):
        u = _leading(unfold(t, n), min(rank, size))
        if rank > size:
            u = np.concatenate([u, rng.standard_normal((size, rank - size))], axis=1)
        factors.append(u)
    norm2 = max(float(np.sum(t * t)), 1e-300)
    err = np.inf
    for _ in range(iters):
        for n in range(t.ndim):
            others = [factors[k] for k in range(t.ndim) if k != n]
            gram = np.ones((rank, rank))
            for f in others:
                gram *= f.T @ f
            mttkrp = unfold(t, n) @ _khatri_rao(others)  # (I_n, rank)
            factors[n] = np.linalg.lstsq(gram, mttkrp.T, rcond=None)[0].T
            if n < t.ndim - 1:  # keep the scale in the last factor until the end
                factors[n] /= np.maximum(np.linalg.norm(factors[n], axis=0), 1e-300)
        new_err = float(np.linalg.norm(t - cp_weight(factors)) / np.sqrt(norm2))
        done = abs(err - new_err) < tol or new_err < 1e-14
        err = new_err
        if done:
            break
    # share each column's scale equally between the factors (sign stays in the first)
    scale = np.linalg.norm(factors[-1], axis=0)
    factors[-1] = factors[-1] / np.maximum(scale, 1e-300)
    root = scale ** (1.0 / t.ndim)
    factors = [f * root for f in factors]
    return factors, float(err)


# =========================================================================== rank choice


def _params_tucker2(m, c, kh, kw, r_out, r_in, bias):
    return c * r_in + r_in * r_out * kh * kw + r_out * m + (m if bias else 0)


def _params_cp(m, c, kh, kw, r, bias):
    return r * (c + kh + kw + m) + (m if bias else 0)


def _one_of(rank, ratio, energy):
    given = [k for k, v in (("rank", rank), ("ratio", ratio), ("energy", energy))
             if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of rank, ratio, energy (got "
                         f"{', '.join(given) or 'none'})")
    return given[0]


def choose_tucker2_ranks(w_shape, rank=None, ratio=None, energy=None, bias=True, w=None):
    """(R_out, R_in) for a Tucker-2 of a weight of shape (M, C, KH, KW); see the module doc.
    `energy` needs the weight `w` itself."""
    m, c, kh, kw = w_shape
    how = _one_of(rank, ratio, energy)
    if how == "rank":
        r_out, r_in = (rank, rank) if np.isscalar(rank) else tuple(rank)
        r_out, r_in = min(int(r_out), m), min(int(r_in), c)
        if min(r_out, r_in) < 1:
            raise ValueError(f"Tucker-2 ranks must be >= 1, got {rank} for weight {w_shape}")
        return r_out, r_in
    if how == "energy":
        if w is None:
            raise ValueError("choosing ranks by energy needs the weight itself (w=...)")
        return energy_rank(mode_energy(w, 0), energy), energy_rank(mode_energy(w, 1), energy)
    if ratio < 1:
        raise ValueError(f"ratio is the factor of fewer parameters and must be >= 1, got "
                         f"{ratio}")
    budget = (m * c * kh * kw + (m if bias else 0)) / ratio
    best = None
    for r_in in range(1, c + 1):  # parameters grow with r_in: keep the last that fits
        r_out = min(m, max(1, round(r_in * m / c)))
        if _params_tucker2(m, c, kh, kw, r_out, r_in, bias) <= budget:
            best = (r_out, r_in)
    if best is None:
        least = _params_tucker2(m, c, kh, kw, 1, 1, bias)
        raise ValueError(f"Tucker-2 of weight {w_shape}: no ranks give {ratio}x fewer "
                         f"parameters (budget {budget:.0f}; ranks (1, 1) already need {least})")
    return best


def choose_cp_rank(w_shape, rank=None, ratio=None, energy=None, bias=True, w=None):
    """R for a CP of a weight of shape (M, C, KH, KW); see the module doc."""
    m, c, kh, kw = w_shape
    how = _one_of(rank, ratio, energy)
    if how == "rank":
        if not np.isscalar(rank) or int(rank) < 1:
            raise ValueError(f"the CP rank must be one int >= 1, got {rank!r}")
        return int(rank)
    if how == "energy":
        if w is None:
            raise ValueError("choosing ranks by energy needs the weight itself (w=...)")
        return max(energy_rank(mode_energy(w, 0), energy),
                   energy_rank(mode_energy(w, 1), energy))
    if ratio < 1:
        raise ValueError(f"ratio is the factor of fewer parameters and must be >= 1, got "
                         f"{ratio}")
    budget = (m * c * kh * kw + (m if bias else 0)) / ratio
    r = int((budget - (m if bias else 0)) // (c + kh + kw + m))
    if r < 1:
        raise ValueError(f"CP of weight {w_shape}: no rank gives {ratio}x fewer parameters "
                         f"(budget {budget:.0f}; rank 1 already needs "
                         f"{_params_cp(m, c, kh, kw, 1, bias)})")
    return r


# =========================================================================== the modules


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else tuple(int(a) for a in v)


def _conv_flops(c, m, kh, kw, ho, wo):
    return 2 * c * m * kh * kw * ho * wo


def _out_hw(hw, kernel, stride, padding):
    return tuple((hw[i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(2))


def _side_algo(algo):
    """The algorithm for the factored model's 1x1 and KHx1 / 1xKW convolutions: the layer's
    own, unless it is one that takes only 3x3 kernels (winograd): then the default."""
    return None if algo == "winograd" else algo


def _host(a):
    return np.asarray(to_device(a, "cpu"))


class Tucker2Conv2d(nn.Module):
    """A KHxKW convolution factored by Tucker-2: 1x1 (C->R_in), KHxKW (R_in->R_out) with the
    original stride and padding, 1x1 (R_out->M) with the original bias."""

    def __init__(self, in_channels, out_channels, kernel_size, ranks, stride=1, padding=0,
                 bias=True, algo=None, dtype=np.float32):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (_pair(kernel_size), _pair(stride),
                                                       _pair(padding))
        self.ranks = (int(ranks[0]), int(ranks[1]))  # (R_out, R_in)
        r_out, r_in = self.ranks
        self.first = nn.Conv2d(in_channels, r_in, 1, bias=False, algo=_side_algo(algo),
                               dtype=dtype)
        self.core = nn.Conv2d(r_in, r_out, self.kernel_size, self.stride, self.padding,
                              bias=False, algo=algo, dtype=dtype)
        self.last = nn.Conv2d(r_out, out_channels, 1, bias=bias, algo=_side_algo(algo),
                              dtype=dtype)

    @classmethod
    def like(cls, conv, ranks):
        """An (untrained) Tucker2Conv2d of `ranks` with conv's shape, stride, padding, bias."""
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, ranks, conv.stride,
                   conv.padding, conv.bias is not None, conv.algo, conv.weight.dtype)

    @classmethod
    def from_conv(cls, conv, rank=None, *, ratio=None, energy=None, hooi_iters=2):
        """Factor a trained nn.Conv2d (ranks by `rank`, `ratio` or `energy`: module doc)."""
        w = _host(conv.weight.data)
        ranks = choose_tucker2_ranks(w.shape, rank, ratio, energy, conv.bias is not None, w)
        core, u_out, u_in = tucker2(w, ranks, hooi_iters)
        new = cls.like(conv, ranks)
        dt = conv.weight.dtype
        new.first.weight.data = np.ascontiguousarray(u_in.T.reshape(ranks[1], -1, 1, 1), dt)
        new.core.weight.data = np.ascontiguousarray(core, dt)
        new.last.weight.data = np.ascontiguousarray(u_out.reshape(-1, ranks[0], 1, 1), dt)
        if conv.bias is not None:
            new.last.bias.data = _host(conv.bias.data).astype(dt, copy=True)
        return new.to(conv.weight.device)

    def forward(self, x):
        return self.last(self.core(self.first(x)))

    def weight(self):
        """The (M, C, KH, KW) weight this chain computes (float64, host)."""
        return tucker2_weight(_host(self.core.weight.data).astype(np.float64),
                              _host(self.last.weight.data)[:, :, 0, 0].astype(np.float64),
                              _host(self.first.weight.data)[:, :, 0, 0].T.astype(np.float64))

    def flops(self, in_hw):
        """2 x multiply-adds for one image of in_hw = (H, W)."""
        (kh, kw), (r_out, r_in) = self.kernel_size, self.ranks
        ho, wo = _out_hw(in_hw, self.kernel_size, self.stride, self.padding)
        h, w = in_hw
        return (_conv_flops(self.in_channels, r_in, 1, 1, h, w)
                + _conv_flops(r_in, r_out, kh, kw, ho, wo)
                + _conv_flops(r_out, self.out_channels, 1, 1, ho, wo))

    executed_flops = flops

    def spec(self):
        return {"method": "tucker2", "ranks": list(self.ranks)}

    def __repr__(self):
        return (f"Tucker2Conv2d({self.in_channels}, {self.out_channels}, kernel_size="
                f"{self.kernel_size}, ranks={self.ranks}, stride={self.stride}, "
                f"padding={self.padding})")


class CPConv2d(nn.Module):
    """A KHxKW convolution factored by CP: 1x1 (C->R), KHx1 depthwise, 1xKW depthwise,
    1x1 (R->M) with the original bias. The depthwise steps run as block-diagonal convs."""

    def __init__(self, in_channels, out_channels, kernel_size, rank, stride=1, padding=0,
                 bias=True, algo=None, dtype=np.float32):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (_pair(kernel_size), _pair(stride),
                                                       _pair(padding))
        self.rank = r = int(rank)
        self.algo = _side_algo(algo)
        kh, kw = self.kernel_size
        self.first = nn.Conv2d(in_channels, r, 1, bias=False, algo=self.algo, dtype=dtype)
        bound_v, bound_h = 1.0 / np.sqrt(kh), 1.0 / np.sqrt(kw)
        rng = np.random.default_rng(0)  # replaced by from_conv or a state dict
        self.vertical = Parameter(rng.uniform(-bound_v, bound_v, (r, 1, kh, 1)).astype(dtype))
        self.horizontal = Parameter(rng.uniform(-bound_h, bound_h, (r, 1, 1, kw)).astype(dtype))
        self.last = nn.Conv2d(r, out_channels, 1, bias=bias, algo=self.algo, dtype=dtype)

    @classmethod
    def like(cls, conv, rank):
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, conv.stride,
                   conv.padding, conv.bias is not None, conv.algo, conv.weight.dtype)

    @classmethod
    def from_conv(cls, conv, rank=None, *, ratio=None, energy=None, iters=200, seed=0):
        """Factor a trained nn.Conv2d by CP-ALS (rank by `rank`, `ratio` or `energy`)."""
        w = _host(conv.weight.data)
        r = choose_cp_rank(w.shape, rank, ratio, energy, conv.bias is not None, w)
        (a, b, v, h), _ = cp_als(w, r, iters=iters, seed=seed)
        new = cls.like(conv, r)
        dt = conv.weight.dtype
        new.first.weight.data = np.ascontiguousarray(b.T.reshape(r, -1, 1, 1), dt)
        new.vertical.data = np.ascontiguousarray(v.T.reshape(r, 1, -1, 1), dt)
        new.horizontal.data = np.ascontiguousarray(h.T.reshape(r, 1, 1, -1), dt)
        new.last.weight.data = np.ascontiguousarray(a.reshape(-1, r, 1, 1), dt)
        if conv.bias is not None:
            new.last.bias.data = _host(conv.bias.data).astype(dt, copy=True)
        return new.to(conv.weight.device)

    def _block_diagonal(self, p):
        """(R, 1, kh, kw) depthwise filters -> the (R, R, kh, kw) block-diagonal weight."""
        xp = get_array_module(p.data)
        return p * Tensor(xp.eye(self.rank, dtype=p.dtype).reshape(self.rank, self.rank, 1, 1))

    def forward(self, x):
        (sh, sw), (ph, pw) = self.stride, self.padding
        x = self.first(x)
        x = F.conv2d(x, self._block_diagonal(self.vertical), None, (sh, 1), (ph, 0),
                     algo=self.algo)
        x = F.conv2d(x, self._block_diagonal(self.horizontal), None, (1, sw), (0, pw),
                     algo=self.algo)
        return self.last(x)

    def factors(self):
        """(A (M, R), B (C, R), V (KH, R), H (KW, R)), float64 on the host."""
        r = self.rank
        return (_host(self.last.weight.data).reshape(-1, r).astype(np.float64),
                _host(self.first.weight.data).reshape(r, -1).T.astype(np.float64),
                _host(self.vertical.data).reshape(r, -1).T.astype(np.float64),
                _host(self.horizontal.data).reshape(r, -1).T.astype(np.float64))

    def weight(self):
        """The (M, C, KH, KW) weight this chain computes (float64, host)."""
        return cp_weight(self.factors())

    def _flops(self, in_hw, depthwise_width):
        (kh, kw), r = self.kernel_size, self.rank
        (sh, sw), (ph, pw) = self.stride, self.padding
        h, w = in_hw
        h1 = (h + 2 * ph - kh) // sh + 1             # after the KHx1 step (width unchanged)
        w1 = (w + 2 * pw - kw) // sw + 1
        return (_conv_flops(self.in_channels, r, 1, 1, h, w)
                + _conv_flops(depthwise_width, r, kh, 1, h1, w)
                + _conv_flops(depthwise_width, r, 1, kw, h1, w1)
                + _conv_flops(r, self.out_channels, 1, 1, h1, w1))

    def flops(self, in_hw):
        """2 x multiply-adds of the decomposition for one image (depthwise: R*KH per pixel)."""
        return self._flops(in_hw, 1)

    def executed_flops(self, in_hw):
        """What minigrad runs: the depthwise steps as R x R block-diagonal convolutions."""
        return self._flops(in_hw, self.rank)

    def spec(self):
        return {"method": "cp", "rank": self.rank}

    def __repr__(self):
        return (f"CPConv2d({self.in_channels}, {self.out_channels}, kernel_size="
                f"{self.kernel_size}, rank={self.rank}, stride={self.stride}, "
                f"padding={self.padding})")


FACTORED = (Tucker2Conv2d, CPConv2d)


# =========================================================================== whole models


def named_modules(model, prefix=""):
    """(dotted name, parent module, attribute name, module) for every module under model."""
    for name, m in model._modules.items():
        full = prefix + name
        yield full, model, name, m
        yield from named_modules(m, full + ".")


def _find(model, name):
    for full, parent, attr, m in named_modules(model):
        if full == name:
            return parent, attr, m
    raise ValueError(f"the model has no layer named {name!r} (its convolutions: "
                     f"{', '.join(n for n, _, _, m in named_modules(model) if _is_conv(m))})")


def _is_conv(m):
    return isinstance(m, nn.Conv2d)


def _input_shapes(model, input_shape):
    """{conv module: the (H, W) of its input} from one forward pass of zeros."""
    seen = {}

    def recording(conv):
        forward = type(conv).forward

        def hook(x):
            seen[id(conv)] = tuple(x.shape[2:])
            return forward(conv, x)
        return hook

    convs = [m for m in model.modules() if _is_conv(m)]
    for conv in convs:
        object.__setattr__(conv, "forward", recording(conv))  # an instance attribute, removed below
    try:
        p = next(iter(model.parameters()))
        x = np.zeros(input_shape, dtype=p.dtype)
        was_training = model.training
        model.eval()
        with no_grad():
            model(Tensor(to_device(x, p.device)))
        model.train(was_training)
    finally:
        for conv in convs:
            del conv.__dict__["forward"]
    return seen


def compress_model(model, method="tucker2", rank=None, ratio=None, energy=None, layers=None,
                   input_shape=None, hooi_iters=2, cp_iters=200):
    """(new_model, report): a copy of `model` with Conv2d layers factored by `method`.

    layers: dotted names ("conv2"); default every Conv2d with more than one input channel.
    input_shape: (1, C, H, W) of the model's input, for the FLOP counts (else None).
    report: {"method", "params_before", "params_after", "layers": [one dict per layer:
    name, ranks, params_before/after, flops_before/after, executed_flops, rel_error]}.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    _one_of(rank, ratio, energy)
    new = copy.deepcopy(model)
    if layers is None:
        targets = [name for name, _, _, m in named_modules(new)
                   if _is_conv(m) and m.in_channels > 1]
    else:
        targets = list(layers)
        for name in targets:
            if not _is_conv(_find(new, name)[2]):
                raise ValueError(f"layer {name!r} is a {type(_find(new, name)[2]).__name__}, "
                                 "not a Conv2d")
    shapes = _input_shapes(new, input_shape) if input_shape is not None else {}
    entries = []
    for name in targets:
        parent, attr, conv = _find(new, name)
        if method == "tucker2":
            fact = Tucker2Conv2d.from_conv(conv, rank, ratio=ratio, energy=energy,
                                           hooi_iters=hooi_iters)
            ranks = list(fact.ranks)
        else:
            fact = CPConv2d.from_conv(conv, rank, ratio=ratio, energy=energy, iters=cp_iters)
            ranks = [fact.rank]
        w = _host(conv.weight.data).astype(np.float64)
        err = float(np.linalg.norm(fact.weight() - w) / max(np.linalg.norm(w), 1e-300))
        hw = shapes.get(id(conv))
        entry = {"name": name, "method": method, "ranks": ranks,
                 "weight_shape": list(w.shape),
                 "params_before": conv.num_parameters(), "params_after": fact.num_parameters(),
                 "rel_error": err, "input_hw": list(hw) if hw else None,
                 "flops_before": None, "flops_after": None, "executed_flops": None}
        if hw is not None:
            kh, kw = conv.kernel_size
            ho, wo = _out_hw(hw, (kh, kw), _pair(conv.stride), _pair(conv.padding))
            entry.update(flops_before=_conv_flops(conv.in_channels, conv.out_channels, kh, kw,
                                                  ho, wo),
                         flops_after=fact.flops(hw), executed_flops=fact.executed_flops(hw))
        setattr(parent, attr, fact)
        entries.append(entry)
    report = {"method": method, "params_before": model.num_parameters(),
              "params_after": new.num_parameters(), "layers": entries}
    return new, report


def compression_spec(model):
    """JSON-able description of the factored layers: {"format", "version", "layers":
    [{"name": "conv2", "method": "tucker2", "ranks": [R_out, R_in]} | {..., "method": "cp",
    "rank": R}]}."""
    layers = [{"name": name, **m.spec()} for name, _, _, m in named_modules(model)
              if isinstance(m, FACTORED)]
    return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "layers": layers}


def apply_spec(model, spec):
    """Factor `model`'s Conv2d layers as `spec` says (fresh weights), in place; returns model.

    A layer already factored the same way is left alone, so applying a spec twice is safe.
    """
    if isinstance(spec, str):
        spec = json.loads(spec)
    if spec.get("format") != SPEC_FORMAT or spec.get("version") != SPEC_VERSION:
        raise ValueError(f"not a {SPEC_FORMAT} spec of version {SPEC_VERSION}: "
                         f"format {spec.get('format')!r}, version {spec.get('version')!r}")
    for layer in spec["layers"]:
        parent, attr, m = _find(model, layer["name"])
        if isinstance(m, FACTORED) and m.spec() == {k: v for k, v in layer.items()
                                                    if k != "name"}:
            continue
        if not _is_conv(m):
            raise ValueError(f"compression spec: layer {layer['name']!r} is a "
                             f"{type(m).__name__}, expected a Conv2d to factor")
        if layer["method"] == "tucker2":
            new = Tucker2Conv2d.like(m, layer["ranks"])
        elif layer["method"] == "cp":
            new = CPConv2d.like(m, layer["rank"])
        else:
            raise ValueError(f"compression spec: unknown method {layer['method']!r} for "
                             f"layer {layer['name']!r}")
        setattr(parent, attr, new.to(m.weight.device))
    return model


# =========================================================================== checkpoints


def _spec_from_meta(meta):
    spec = meta.get("compression")
    return json.loads(spec) if spec else None


def prepare_resume(model, meta):
    """Give `model` the structure of the checkpoint whose meta dict is `meta` (a no-op for an
    uncompressed one). Call it before building the optimizer: it replaces parameters."""
    spec = _spec_from_meta(meta)
    if spec is not None:
        apply_spec(model, spec)
    return model


def load_compressed(path, model):
    """Load a checkpoint (compressed or not) into `model`, factoring it first; return meta."""
    from ..checkpoint import read_checkpoint

    state, _, meta = read_checkpoint(path)
    prepare_resume(model, meta)
    model.load_state_dict(state)
    return meta


def save_compressed(path, model, meta=None):
    """Save `model` with its compression spec in the meta (no optimizer state: the factored
    parameters are new, so a resumed run starts its optimizer afresh)."""
    from ..checkpoint import save_checkpoint

    meta = {k: v for k, v in (meta or {}).items() if k not in ("compression", "best_loss")}
    meta["compression"] = json.dumps(compression_spec(model))
    return save_checkpoint(path, model, meta=meta)


# =========================================================================== the command


def _rank_arg(text):
    try:
        parts = [int(p) for p in str(text).split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise ValueError(f"--rank takes R or R_OUT,R_IN (positive ints), got {text!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _fmt_int(n):
    return "-" if n is None else f"{n:,}"


def format_report(report, before=None, after=None):
    lines = [f"{'layer':<12} {'ranks':<10} {'params':>20} {'MFLOPs':>17} {'rel. error':>10}"]
    for e in report["layers"]:
        fb, fa = e["flops_before"], e["flops_after"]
        flops = "-" if fb is None else f"{fb / 1e6:.2f} -> {fa / 1e6:.2f}"
        lines.append(f"{e['name']:<12} {','.join(map(str, e['ranks'])):<10} "
                     f"{e['params_before']:>9,} -> {e['params_after']:<7,} {flops:>17} "
                     f"{e['rel_error']:>10.4f}")
    lines.append(f"model parameters {report['params_before']:,} -> {report['params_after']:,}")
    if before is not None:
        lines.append(f"test accuracy {before:.4f} -> {after:.4f} (before fine-tuning)")
    return "\n".join(lines)


def cmd_compress(args):
    from ..checkpoint import CheckpointError, check_writable, read_checkpoint
    from ..tasks import build_task
    from ..train import evaluate

    try:  # before any work: a typo in --rank or --out must not cost a compression
        rank = _rank_arg(args.rank) if args.rank is not None else None
        check_writable(args.out)
    except (ValueError, CheckpointError) as e:
        print(f"minigrad compress: {e}; see `minigrad compress --help`", file=sys.stderr)
        return 2
    state, _, meta = read_checkpoint(args.checkpoint)
    task_name = args.task or meta.get("task")
    if not task_name:
        print(f"minigrad compress: {args.checkpoint} does not say its task; pass --task",
              file=sys.stderr)
        return 2
    try:
        task = build_task(task_name, seed=int(meta.get("seed", 0)), model=meta.get("model"),
                          conv=meta.get("conv") if task_name == "mnist" else None)
        model = task.model
        prepare_resume(model, meta)
        model.load_state_dict(state)
        X_test, y_test = task.test
        sample = X_test[:1]
        if task.transform is not None:
            sample, _ = task.transform((sample, y_test[:1]))
        layers = args.layers.split(",") if args.layers else None
        new, report = compress_model(model, args.method, rank=rank, ratio=args.ratio,
                                     energy=args.energy, layers=layers,
                                     input_shape=np.shape(sample), hooi_iters=args.hooi_iters,
                                     cp_iters=args.cp_iters)
    except ValueError as e:
        print(f"minigrad compress: {e}", file=sys.stderr)
        return 2
    before = after = None
    if args.eval:
        before = evaluate(model, X_test, y_test, transform=task.transform)
        after = evaluate(new, X_test, y_test, transform=task.transform)
        report.update(accuracy_before=before, accuracy_after=after)
    save_compressed(args.out, new, {**meta, "compressed_from": str(args.checkpoint)})
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report, before, after))
        print(f"wrote {args.out}; fine-tune it with `minigrad train {task_name} --resume "
              f"{args.out} --epochs N` (N counts the checkpoint's "
              f"{int(meta.get('epoch', 0))} epochs)")
    return 0


def add_parser(subparsers):
    """Register `minigrad compress` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "compress", help="factor a checkpoint's convolutions (Tucker-2 or CP)",
        description="Replace trained Conv2d layers by factored ones (Tucker-2: 1x1, KxK, "
                    "1x1; CP: 1x1, Kx1, 1xK, 1x1) and save a checkpoint that `minigrad "
                    "train --resume` fine-tunes. See minigrad/tools/compress.py.")
    p.add_argument("checkpoint", help="checkpoint written by `minigrad train --save`")
    p.add_argument("--method", choices=METHODS, default="tucker2")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", default=None,
                     help="R (both Tucker-2 ranks, or the CP rank) or R_OUT,R_IN (Tucker-2)")
    how.add_argument("--ratio", type=float, default=None,
                     help="the largest ranks with this many times fewer parameters per layer")
    how.add_argument("--energy", type=float, default=None,
                     help="keep this fraction of the squared singular values (0-1]")
    p.add_argument("--layers", default=None,
                   help="comma-separated layer names (default: every conv with C > 1)")
    p.add_argument("--out", required=True, help="the compressed checkpoint (.npz)")
    p.add_argument("--task", default=None, help="default: the checkpoint's")
    p.add_argument("--hooi-iters", type=int, default=2, help="Tucker-2: HOOI sweeps after HOSVD")
    p.add_argument("--cp-iters", type=int, default=200, help="CP: most ALS sweeps")
    p.add_argument("--eval", action="store_true",
                   help="report the test accuracy before and after compression")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_compress)
    return p
