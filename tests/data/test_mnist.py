"""MNIST: IDX parsing, checksums, data directory, downloads from local fake mirrors.

No test touches the internet: downloads come from file:// URLs or an http.server bound to
127.0.0.1, and an autouse fixture points the default MIRRORS at a directory that does not
exist, so a test that forgot to pass mirrors= fails instead of going online.
"""

import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

import minigrad.data.mnist as mnist
from minigrad.data import (
    ChecksumError,
    MNISTNotFoundError,
    data_dir,
    download_mnist,
    load_mnist,
    read_idx,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def shared_mnist():
    """The published files: $MINIGRAD_DATA if set, else ../shared/data/mnist from the repo."""
    env = os.environ.get(mnist.ENV_VAR)
    root = Path(env) if env else REPO.parent / "shared" / "data" / "mnist"
    if not all((root / name).is_file() for name in mnist.FILES):
        pytest.skip(f"MNIST files not found in {root}; set {mnist.ENV_VAR}")
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    nowhere = tmp_path_factory.mktemp("no-mirror") / "absent"
    monkeypatch.setattr(mnist, "MIRRORS", (nowhere.as_uri() + "/",))


@pytest.fixture
def mirror(tmp_path, shared_mnist):
    """A directory holding the four published files, and its file:// URL."""
    d = tmp_path / "mirror"
    d.mkdir()
    for name in mnist.FILES:
        shutil.copyfile(shared_mnist / name, d / name)
    return d, d.as_uri() + "/"


@pytest.fixture
def http_mirror(mirror):
    """Serve the mirror directory on 127.0.0.1; yields (url, list of requested paths)."""
    directory, _ = mirror
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there: connection refused


def idx_bytes(array, code=0x08):
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def no_partial_files(directory):
    return [p.name for p in Path(directory).iterdir() if p.name.endswith(".part")]


# ---- read_idx -------------------------------------------------------------------------------
@pytest.mark.mnist
def test_read_idx_on_the_published_files(shared_mnist):
    labels = read_idx(shared_mnist / "train-labels-idx1-ubyte.gz", expect_magic=0x801)
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    images = read_idx(shared_mnist / "t10k-images-idx3-ubyte.gz", expect_magic=0x803)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert images.flags.writeable
    # raw (uncompressed) bytes parse the same as gzip
    raw = gzip.decompress((shared_mnist / "t10k-labels-idx1-ubyte.gz").read_bytes())
    np.testing.assert_array_equal(read_idx(raw)[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])


@pytest.mark.parametrize(
    "code,dtype",
    [(0x08, ">u1"), (0x09, ">i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")],
)
def test_read_idx_round_trips_every_idx_type(code, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if code == 0x08:
        a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    got = read_idx(gzip.compress(idx_bytes(a, code)))
    np.testing.assert_array_equal(got, a)
    assert got.dtype.isnative


@pytest.mark.mnist
def test_truncated_payload_names_file_and_sizes(tmp_path, shared_mnist):
    raw = gzip.decompress((shared_mnist / "t10k-labels-idx1-ubyte.gz").read_bytes())
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(raw[:-100])
    with pytest.raises(ValueError) as info:
        read_idx(bad)
    msg = str(info.value)
    assert str(bad) in msg and "truncated" in msg
    assert "needs 10000 bytes" in msg and "got 9900" in msg


def test_trailing_bytes_and_truncated_header():
    a = np.zeros((3, 2), np.uint8)
    with pytest.raises(ValueError, match="trailing bytes"):
        read_idx(idx_bytes(a) + b"\0")
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(idx_bytes(a)[:7])
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(b"\0\0")


@pytest.mark.mnist
def test_truncated_gzip(tmp_path, shared_mnist):
    bad = tmp_path / "cut.gz"
    bad.write_bytes((shared_mnist / "train-labels-idx1-ubyte.gz").read_bytes()[:5000])
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as info:
        read_idx(bad)
    assert str(bad) in str(info.value)


def test_wrong_magic(tmp_path):
    bad = tmp_path / "not-idx"
    bad.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(ValueError, match="wrong magic number: got 0x12345678") as info:
        read_idx(bad)
    assert str(bad) in str(info.value)
    labels = idx_bytes(np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="got 0x00000801, expected 0x00000803"):
        read_idx(labels, expect_magic=0x803)


# ---- data directory -------------------------------------------------------------------------
def test_data_dir_env_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGRAD_DATA", str(tmp_path / "here"))
    assert data_dir() == tmp_path / "here"
    monkeypatch.delenv("MINIGRAD_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "minigrad" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "minigrad" / "mnist"


# ---- load_mnist -----------------------------------------------------------------------------
@pytest.mark.mnist
def test_load_mnist_from_env_dir(monkeypatch, shared_mnist):
    monkeypatch.setenv("MINIGRAD_DATA", str(shared_mnist))
    X_train, y_train, X_test, y_test = load_mnist(download=False)
    assert X_train.shape == (60000, 28, 28) and X_train.dtype == np.uint8
    assert X_test.shape == (10000, 28, 28) and X_test.dtype == np.uint8
    assert y_train.dtype == y_test.dtype == np.int64
    np.testing.assert_array_equal(y_train[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(y_test[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    assert np.bincount(y_train).tolist()[:2] == [5923, 6742]
    # arrays belong to the caller: changing them does not change the next load (cache)
    X_train[:] = 0
    y_train[:] = 0
    X2, y2, _, _ = load_mnist(download=False)
    assert X2.max() == 255 and y2[0] == 5


def test_offline_with_no_files_says_what_to_put_where(tmp_path):
    root = tmp_path / "empty"
    with pytest.raises(MNISTNotFoundError) as info:
        load_mnist(root, download=False)
    msg = str(info.value)
    assert str(root) in msg and "MINIGRAD_DATA" in msg
    for name in mnist.FILES:
        assert str(root / name) in msg


def test_all_mirrors_failing_lists_every_attempt(tmp_path):
    root = tmp_path / "cache"
    dead = [closed_port_url(), (tmp_path / "nothing").as_uri() + "/"]
    with pytest.raises(MNISTNotFoundError) as info:
        load_mnist(root, mirrors=dead, timeout=5)
    msg = str(info.value)
    for name in mnist.FILES:
        assert dead[0] + name in msg and dead[1] + name in msg
        assert str(root / name) in msg
    assert "MINIGRAD_DATA" in msg
    assert not root.exists() or no_partial_files(root) == []


@pytest.mark.mnist
def test_download_into_empty_dir_from_file_mirror(tmp_path, mirror, shared_mnist):
    _, url = mirror
    root = tmp_path / "cache" / "minigrad" / "mnist"
    assert download_mnist(root, mirrors=[url]) == root
    for name in mnist.FILES:
        assert (root / name).read_bytes() == (shared_mnist / name).read_bytes()
    assert no_partial_files(root) == []
    X_train, y_train, _, _ = load_mnist(root, download=False)
    assert X_train.shape == (60000, 28, 28) and y_train[0] == 5


@pytest.mark.mnist
def test_mirror_fallback(tmp_path, mirror):
    _, good = mirror
    bad_dir = tmp_path / "bad-mirror"
    bad_dir.mkdir()
    for name in mnist.FILES:  # serves corrupt copies
        (bad_dir / name).write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x01x"))
    root = tmp_path / "cache"
    download_mnist(root, mirrors=[closed_port_url(), bad_dir.as_uri() + "/", good], timeout=5)
    for name in mnist.FILES:
        data = gzip.decompress((root / name).read_bytes())
        assert hashlib.sha256(data).hexdigest() == mnist.SHA256[name]


@pytest.mark.mnist
def test_bad_checksum_is_refused_and_refetched_over_http(tmp_path, shared_mnist, http_mirror):
    url, requested = http_mirror
    root = tmp_path / "cache"
    root.mkdir()
    for name in mnist.FILES:
        shutil.copyfile(shared_mnist / name, root / name)
    # flip one label: a valid gzip and a valid IDX file, only the checksum can tell
    name = "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress((root / name).read_bytes()))
    raw[8] = (raw[8] + 1) % 10
    (root / name).write_bytes(gzip.compress(bytes(raw)))

    with pytest.raises(ChecksumError, match=name):  # offline: refuse, do not repair
        load_mnist(root, download=False)
    with pytest.warns(UserWarning, match=f"{name}.*refusing"):
        _, _, _, y_test = load_mnist(root, mirrors=[url], timeout=5)
    assert requested == ["/" + name]  # only the bad file was fetched
    assert y_test[0] == 7
    assert (root / name).read_bytes() == (shared_mnist / name).read_bytes()
    assert no_partial_files(root) == []


@pytest.mark.mnist
def test_truncated_file_on_disk_is_refetched(tmp_path, mirror):
    _, url = mirror
    root = tmp_path / "cache"
    root.mkdir()
    for name in mnist.FILES:
        shutil.copyfile(mirror[0] / name, root / name)
    name = "train-labels-idx1-ubyte.gz"
    (root / name).write_bytes((mirror[0] / name).read_bytes()[:1000])  # interrupted copy
    with pytest.warns(UserWarning, match="truncated"):
        download_mnist(root, mirrors=[url])
    assert (root / name).read_bytes() == (mirror[0] / name).read_bytes()


@pytest.mark.mnist
def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path, mirror, monkeypatch):
    _, url = mirror
    root = tmp_path / "cache"
    root.mkdir()

    def failing_replace(src, dst):
        raise OSError("disk full (simulated)")

    with monkeypatch.context() as m:  # (not monkeypatch.undo(): keep the offline fixture)
        m.setattr(mnist.os, "replace", failing_replace)
        with pytest.raises(OSError, match="simulated"):
            download_mnist(root, mirrors=[url])
    assert list(root.iterdir()) == []  # neither the target nor its temporary file

    # a write that dies half-way is cleaned up the same way
    class Boom(Exception):
        pass

    def failing_fsync(fd):
        raise Boom()

    with monkeypatch.context() as m:
        m.setattr(mnist.os, "fsync", failing_fsync)
        with pytest.raises(Boom):
            mnist._atomic_write(root / "t10k-labels-idx1-ubyte.gz", b"partial")
    assert list(root.iterdir()) == []


def test_a_corrupt_mirror_copy_is_never_written(tmp_path):
    bad_dir = tmp_path / "bad-mirror"
    bad_dir.mkdir()
    payload = gzip.compress(idx_bytes(np.zeros(10000, np.uint8)))  # valid IDX, wrong data
    (bad_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(payload)
    root = tmp_path / "cache"
    with pytest.raises(MNISTNotFoundError, match="sha256"):
        download_mnist(root, mirrors=[bad_dir.as_uri() + "/"])
    assert not root.exists() or list(root.iterdir()) == []


# ---- one-line summaries for the command line ---------------------------------------------------
def test_missing_files_summary_is_one_line_naming_files_and_directory(tmp_path):
    with pytest.raises(MNISTNotFoundError) as info:
        load_mnist(tmp_path, download=False)
    e = info.value
    assert e.root == tmp_path and e.missing == list(mnist.FILES) and e.corrupt == {}
    line = e.summary()
    assert "\n" not in line and str(tmp_path) in line and "missing" in line
    assert "downloading is off" in line and mnist.ENV_VAR in line


@pytest.mark.mnist
def test_a_corrupt_file_that_cannot_be_refetched_is_called_corrupt(tmp_path, mirror):
    root = tmp_path / "cache"
    root.mkdir()
    for name in mnist.FILES:
        shutil.copyfile(mirror[0] / name, root / name)
    name = mnist.TEST_IMAGES
    (root / name).write_bytes((mirror[0] / name).read_bytes()[:5000])  # present, truncated
    with pytest.warns(UserWarning, match="refusing"):
        with pytest.raises(MNISTNotFoundError) as info:  # the default mirrors: unreachable
            load_mnist(root)
    e = info.value
    assert e.missing == [] and list(e.corrupt) == [name]
    assert f"MNIST file {root / name} is corrupt" in str(e) and "missing" not in str(e)
    line = e.summary()
    assert "\n" not in line and f"{name} corrupt" in line and "missing" not in line
    assert "downloading failed" in line


def test_checksum_error_summary(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    for name in mnist.FILES:
        (root / name).write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(ChecksumError) as info:
        load_mnist(root, download=False)
    line = info.value.summary()
    assert "\n" not in line and "is corrupt (sha256" in line and str(root) in line
    assert "delete it" in line
