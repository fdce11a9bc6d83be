"""MNIST (LeCun, Cortes, Burges): the four published IDX files, verified, downloaded, parsed.

Where the files live (``data_dir()``), first match wins:

1. the ``root`` argument of ``load_mnist`` / ``download_mnist``;
2. the ``MINIGRAD_DATA`` environment variable: a directory that holds the four files
   directly. Tests and CI set it to ``../shared/data/mnist`` and never touch the network;
3. ``$XDG_CACHE_HOME/minigrad/mnist``, else ``~/.cache/minigrad/mnist``.

Integrity: each file is checked against the sha256 of its *decompressed* bytes (``SHA256``
below, the spec, as torchvision keeps an md5 table). Mirrors and re-compression change the
``.gz`` bytes but never the decompressed ones, so one table serves every source. Hashing the
47 MB of training images costs about 25 ms, against about 130 ms to gunzip them, so files are
simply verified on every load (no marker files), and decoded arrays are kept in memory for
repeated loads in one process.

The IDX format (http://yann.lecun.com/exdb/mnist/), all integers big-endian::

    bytes 0-1  0x0000
    byte  2    element type: 0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float, 0x0E double
    byte  3    number of dimensions d
    4*d bytes  the size of each dimension (uint32)
    the data   prod(sizes) elements, row-major

so labels start with the magic number 0x00000801 (ubyte, 1 dim) and images 0x00000803.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import math
import os
import struct
import tempfile
import threading
import urllib.request
import warnings
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "ENV_VAR",
    "FILES",
    "MIRRORS",
    "SHA256",
    "ChecksumError",
    "MNISTNotFoundError",
    "data_dir",
    "download_mnist",
    "load_mnist",
    "read_idx",
]

ENV_VAR = "MINIGRAD_DATA"

# Tried in order; each is a directory URL that serves the four published file names.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# sha256 of each file's decompressed bytes (from ../shared/data/mnist/SHA256SUMS.uncompressed).
SHA256 = {
    TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

LABELS_MAGIC = 0x00000801  # ubyte, 1 dimension
IMAGES_MAGIC = 0x00000803  # ubyte, 3 dimensions

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class ChecksumError(ValueError):
    """A file's decompressed bytes do not have the published sha256.

    ``path`` is the refused file and ``problem`` what is wrong with it.
    """

    def __init__(self, message: str, path=None, problem: str | None = None):
        super().__init__(message)
        self.path, self.problem = path, problem

    def summary(self) -> str:
        """One line for a command line: which file, what is wrong, what to do."""
        if self.path is None:
            return str(self).splitlines()[0]
        path = Path(self.path)
        return (f"MNIST file {path.name} in {path.parent} is corrupt ({self.problem}); "
                f"delete it so that it is downloaded again, or replace it with the "
                f"published file")


class MNISTNotFoundError(FileNotFoundError):
    """The MNIST files are not on disk and could not be downloaded.

    ``root`` is the directory searched, ``missing`` the names of absent files, ``corrupt``
    maps the names of present but refused files to what is wrong with them, ``failures``
    maps names to what each mirror said (None: downloading was off).
    """

    def __init__(self, message: str, root=None, missing=(), corrupt=None, failures=None):
        super().__init__(message)
        self.root, self.missing = root, list(missing)
        self.corrupt, self.failures = dict(corrupt or {}), failures

    def summary(self) -> str:
        """One line for a command line: which files, where, why, and what to do."""
        if self.root is None:
            return str(self).splitlines()[0]
        parts = []
        if self.missing:
            parts.append(f"{', '.join(self.missing)} missing")
        for name, problem in self.corrupt.items():
            parts.append(f"{name} corrupt ({problem})")
        how = "downloading is off" if self.failures is None else "downloading failed"
        if self.failures:
            first = next(iter(self.failures.values()))
            if first:
                how += f" ({first[-1]})"
        return (f"MNIST files in {self.root}: {'; '.join(parts)}; {how}; put the published "
                f"file{'s' if len(parts) > 1 else ''} there (or run again online to download "
                f"{'them' if len(parts) > 1 else 'it'}), or set {ENV_VAR} to a directory "
                "that holds all four")


# ---- IDX ----------------------------------------------------------------------------------
def _gunzip_if_gzip(data: bytes, name: str) -> bytes:
    """Decompress ``data`` if it starts with the gzip magic 0x1f8b, else return it as is."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{name}: corrupt or truncated gzip stream: {e}") from None


def _parse_idx(data: bytes, name: str, expect_magic: int | None = None) -> np.ndarray:
    """Parse decompressed IDX bytes into a read-only array viewing ``data`` (no copy)."""
    if len(data) < 4:
        raise ValueError(
            f"{name}: truncated IDX header: expected at least 4 bytes, got {len(data)}"
        )
    magic = int.from_bytes(data[:4], "big")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{name}: not an IDX file: wrong magic number: got 0x{magic:08x}, expected "
            f"0x000008NN-style (0x{LABELS_MAGIC:08x} for labels, 0x{IMAGES_MAGIC:08x} for images)"
        )
    if expect_magic is not None and magic != expect_magic:
        raise ValueError(
            f"{name}: wrong magic number: got 0x{magic:08x}, expected 0x{expect_magic:08x}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{name}: truncated IDX header: {ndim} dimensions need {header} bytes, got {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected, got = count * dtype.itemsize, len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes"
        raise ValueError(
            f"{name}: {what}: shape {dims} of {dtype.name} needs {expected} bytes after the "
            f"{header}-byte header, got {got}"
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


def read_idx(source, *, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file into a new numpy array (native byte order).

    ``source`` is a path, or the file's bytes; gzip-compressed input is detected by its
    magic (0x1f8b) and decompressed. ``expect_magic``, e.g. ``0x00000803`` for MNIST images,
    additionally requires that exact magic number. Raises ``ValueError`` naming the file and
    what is wrong: a wrong magic number, a truncated header or payload, trailing bytes.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, data = "<bytes>", bytes(source)
    else:
        name = os.fspath(source)
        data = Path(source).read_bytes()
    data = _gunzip_if_gzip(data, name)
    array = _parse_idx(data, name, expect_magic)
    return array.astype(array.dtype.newbyteorder("="))  # a writable copy, native order


# ---- where the files are ------------------------------------------------------------------
def data_dir() -> Path:
    """The MNIST directory: ``$MINIGRAD_DATA``, else ``$XDG_CACHE_HOME/minigrad/mnist``,
    else ``~/.cache/minigrad/mnist``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "minigrad" / "mnist"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent/old or complete.

    A temporary file in the same directory (so the rename cannot cross file systems) is
    written and fsynced, then renamed over ``path``; on any failure it is removed.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError, AttributeError):  # make the rename durable (POSIX)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _fetch(name: str, root: Path, mirrors, timeout: float) -> tuple[bytes, list[str]]:
    """Try each mirror for ``name``; on the first verified copy write it to ``root/name``.

    Returns (decompressed bytes, []) on success, (b"", what each mirror said) on failure.
    """
    failures = []
    for base in mirrors:
        url = base + name if base.endswith("/") else f"{base}/{name}"
        request = urllib.request.Request(url, headers={"User-Agent": "minigrad"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
            data = _gunzip_if_gzip(payload, url)
        except (OSError, ValueError, http.client.HTTPException) as e:
            failures.append(f"{url}: {e}")
            continue
        digest = _sha256(data)
        if digest != SHA256[name]:
            failures.append(
                f"{url}: sha256 of decompressed bytes is {digest}, expected {SHA256[name]}"
            )
            continue
        root.mkdir(parents=True, exist_ok=True)
        _atomic_write(root / name, payload)
        return data, []
    return b"", failures


def _not_found_message(root: Path, missing, failures: dict | None, corrupt=None) -> str:
    corrupt = corrupt or {}
    absent = [name for name in missing if name not in corrupt]
    lines = []
    if absent:
        lines.append(f"MNIST files missing from {root}: {', '.join(absent)}.")
    lines += [f"MNIST file {root / name} is corrupt: {problem}." for name, problem
              in corrupt.items()]
    if failures is None:
        lines.append("Downloading is off (download=False).")
    else:
        lines.append("Every mirror failed:")
        for name in missing:
            lines += [f"  {line}" for line in failures.get(name, [])] or [f"  {name}: no mirrors"]
    lines.append(f"To fix it, put these files (the published .gz files) in {root}:")
    lines += [f"  {root / name}" for name in FILES]
    lines.append(
        f"or set the {ENV_VAR} environment variable to a directory that holds them "
        "(e.g. ../shared/data/mnist from the minigrad repository), or pass root=."
    )
    return "\n".join(lines)


def _verified_contents(root: Path, download: bool, mirrors, timeout: float, force: bool):
    """{name: decompressed verified bytes} for the four files, downloading what is needed."""
    contents, missing, corrupt = {}, [], {}
    for name in FILES:
        path = root / name
        if path.is_file() and not force:
            try:
                data = _gunzip_if_gzip(path.read_bytes(), str(path))
                digest = _sha256(data)
                problem = (
                    None
                    if digest == SHA256[name]
                    else (f"sha256 of decompressed bytes is {digest}, expected {SHA256[name]}")
                )
            except ValueError as e:
                problem = str(e).removeprefix(f"{path}: ")
            if problem is None:
                contents[name] = data
                continue
            if not download:
                raise ChecksumError(
                    f"{path}: {problem}. Delete it and load with download=True, "
                    "or replace it with the published file.",
                    path=path,
                    problem=problem,
                )
            corrupt[name] = problem
            warnings.warn(f"{path}: {problem}; refusing it and downloading it again", stacklevel=3)
        missing.append(name)
    if missing and not download:
        raise MNISTNotFoundError(
            _not_found_message(root, missing, None), root=root, missing=missing
        )
    failures = {}
    for name in missing:
        data, failed = _fetch(name, root, MIRRORS if mirrors is None else mirrors, timeout)
        if failed:
            failures[name] = failed
        else:
            contents[name] = data
    if failures:
        failed = list(failures)
        refused = {name: corrupt[name] for name in failed if name in corrupt}
        raise MNISTNotFoundError(
            _not_found_message(root, failed, failures, refused),
            root=root,
            missing=[name for name in failed if name not in refused],
            corrupt=refused,
            failures=failures,
        )
    return contents


def download_mnist(root=None, *, mirrors=None, timeout: float = 30.0, force: bool = False) -> Path:
    """Make sure the four verified files are in ``root`` (default ``data_dir()``).

    Present files are verified and kept; missing ones, or ones with a wrong checksum (a
    warning says which), are fetched from ``mirrors`` (default ``MIRRORS``) with urllib,
    verified, and written atomically. ``force`` re-fetches everything. Returns the directory.
    """
    root = Path(root).expanduser() if root is not None else data_dir()
    _verified_contents(root, True, mirrors, timeout, force)
    return root


# Decoded arrays of the last load, keyed by each file's (path, size, mtime): a second
# load_mnist in the same process skips the gunzip, hash and parse (~0.2 s).
_cache: dict = {}
_cache_lock = threading.Lock()


def _stat_key(root: Path):
    try:
        return tuple(
            (str((root / n).resolve()), (s := (root / n).stat()).st_size, s.st_mtime_ns)
            for n in FILES
        )
    except OSError:
        return None


def load_mnist(root=None, download: bool = True, *, mirrors=None, timeout: float = 30.0):
    """Return ``(X_train, y_train, X_test, y_test)``.

    X: uint8 of shape (60000, 28, 28) and (10000, 28, 28); y: int64 labels 0-9.

    ``root`` defaults to ``data_dir()`` (``$MINIGRAD_DATA`` or the cache directory). Files
    are verified by the sha256 of their decompressed bytes; missing or corrupt ones are
    downloaded when ``download`` is true, else ``MNISTNotFoundError`` / ``ChecksumError``
    say which files to put where. Each call returns new arrays, which the caller may modify.
    """
    root = Path(root).expanduser() if root is not None else data_dir()
    key = _stat_key(root)
    with _cache_lock:
        arrays = _cache.get(key) if key is not None else None
    if arrays is None:
        contents = _verified_contents(root, download, mirrors, timeout, force=False)
        arrays = (
            _parse_idx(contents[TRAIN_IMAGES], str(root / TRAIN_IMAGES), IMAGES_MAGIC),
            _parse_idx(contents[TRAIN_LABELS], str(root / TRAIN_LABELS), LABELS_MAGIC),
            _parse_idx(contents[TEST_IMAGES], str(root / TEST_IMAGES), IMAGES_MAGIC),
            _parse_idx(contents[TEST_LABELS], str(root / TEST_LABELS), LABELS_MAGIC),
        )
        key = _stat_key(root)  # files may have just been downloaded
        if key is not None:
            with _cache_lock:
                _cache.clear()  # keep one dataset, not every directory ever loaded
                _cache[key] = arrays
    x_train, y_train, x_test, y_test = arrays
    return (x_train.copy(), y_train.astype(np.int64), x_test.copy(), y_test.astype(np.int64))
