"""Engine-wide defaults, set in one place.

    import minigrad
    minigrad.config.conv_algo = "kn2row"     # used by conv2d / nn.Conv2d when algo=None
    minigrad.config.conv_backend = "numpy"   # the readable reference kernels

The environment variables MINIGRAD_CONV_ALGO and MINIGRAD_CONV_BACKEND set the start values.
"""
import os

conv_algo = os.environ.get("MINIGRAD_CONV_ALGO", "im2col")
conv_backend = os.environ.get("MINIGRAD_CONV_BACKEND", "numba")
