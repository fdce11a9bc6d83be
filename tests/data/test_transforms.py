"""Augmentations (minigrad.data.transforms): shapes, seeding, and what each one does to pixels."""
import numpy as np
import pytest

from minigrad.data import DataLoader
from minigrad.data import transforms as T


def images(n=6, c=1, h=28, w=28, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(dtype)


def uint8_mnist(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8), np.arange(n)


RANDOM = [T.RandomShift(2), T.RandomRotation(10), T.ElasticDistortion(34, 4)]


# ---- shapes, dtypes, seeding ------------------------------------------------------------------
@pytest.mark.parametrize("transform", RANDOM, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [1, 3])
def test_shape_and_dtype_are_kept_and_labels_pass_through(transform, dtype, c):
    x, y = images(c=c, dtype=dtype), np.arange(6)
    xo, yo = transform((x, y), T.batch_rng(0, 0, 0))
    assert xo.shape == x.shape and xo.dtype == x.dtype
    assert yo is y
    assert np.all(np.isfinite(xo))


def test_mnist_augment_takes_uint8_and_gives_normalised_float32():
    x, y = uint8_mnist(8)
    xo, yo = T.mnist_augment()((x, y), T.batch_rng(0, 0, 0))
    assert xo.shape == (8, 1, 28, 28) and xo.dtype == np.float32
    np.testing.assert_array_equal(yo, y)


@pytest.mark.parametrize("transform", [*RANDOM, T.mnist_augment()], ids=repr)
def test_same_seed_same_result_other_seed_other_result(transform):
    x = uint8_mnist(8)[0] if isinstance(transform, T.Compose) else images(8)
    y = np.arange(8)
    a = transform((x, y), T.batch_rng(3, 1, 5))[0]
    b = transform((x, y), T.batch_rng(3, 1, 5))[0]
    np.testing.assert_array_equal(a, b)
    for other in (T.batch_rng(4, 1, 5), T.batch_rng(3, 2, 5), T.batch_rng(3, 1, 6)):
        assert not np.array_equal(a, transform((x, y), other)[0])


def test_batch_streams_are_not_the_epoch_order_stream():
    # the loader's epoch order uses default_rng([seed, epoch]); batch 0 must not reuse it
    order_stream = np.random.default_rng([3, 1]).random(4)
    assert not np.array_equal(T.batch_rng(3, 1, 0).random(4), order_stream)


def test_shards_of_one_batch_get_streams_of_their_own():
    draws = {tuple(T.batch_rng(3, 1, 5, shard).random(4)) for shard in (None, 0, 1, 2)}
    assert len(draws) == 4
    np.testing.assert_array_equal(T.batch_rng(3, 1, 5, 1).random(4),
                                  T.batch_rng(3, 1, 5, 1).random(4))


def test_each_image_gets_its_own_parameters():
    x = np.repeat(images(1), 16, axis=0)  # 16 copies of one image
    out = T.RandomRotation(10)((x, None), T.batch_rng(0, 0, 0))[0]
    assert len({out[i].tobytes() for i in range(16)}) > 1


def test_non_float_or_not_4d_images_are_refused():
    with pytest.raises(ValueError, match="N, C, H, W"):
        T.RandomShift(2)((np.zeros((4, 28, 28), np.float32), None), T.batch_rng(0, 0, 0))
    with pytest.raises(ValueError, match="mnist_normalize"):
        T.RandomRotation(5)((np.zeros((4, 1, 28, 28), np.uint8), None), T.batch_rng(0, 0, 0))
    with pytest.raises(TypeError, match="rng"):
        T.mnist_augment()(uint8_mnist(2))


# ---- what each one does -----------------------------------------------------------------------
@pytest.mark.parametrize("dy,dx", [(2, -1), (-2, 2), (0, 0), (1, 0)])
def test_shift_moves_content_by_the_shift(dy, dx):
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 10, 12] = 1.0
    out = T.shift_images(x, np.array([[dy, dx]]))
    assert out[0, 0, 10 + dy, 12 + dx] == 1.0 and out.sum() == 1.0
    # and in general: a zero-filled translation of the whole image
    x = images(1)
    out = T.shift_images(x, np.array([[dy, dx]]), fill=-1.0)
    expected = np.full_like(x, -1.0)
    src = x[0, 0, max(0, -dy):28 - max(0, dy), max(0, -dx):28 - max(0, dx)]
    expected[0, 0, max(0, dy):28 - max(0, -dy), max(0, dx):28 - max(0, -dx)] = src
    np.testing.assert_array_equal(out, expected)


def test_random_shift_stays_within_its_bound():
    x = np.zeros((200, 1, 28, 28), np.float32)
    x[:, 0, 13, 13] = 1.0
    out = T.RandomShift(2)((x, None), T.batch_rng(0, 0, 0))[0]
    moved = [np.argwhere(o[0] == 1.0)[0] - 13 for o in out]
    assert np.abs(moved).max() == 2  # 200 draws: every offset in [-2, 2] occurs
    assert len({tuple(m) for m in moved}) == 25


def test_rotation_by_zero_is_the_identity():
    x = images(4, c=2)
    np.testing.assert_array_equal(T.rotate_images(x, np.zeros(4)), x)
    np.testing.assert_array_equal(T.RandomRotation(0)((x, None), T.batch_rng(0, 0, 0))[0], x)


def test_rotation_by_90_degrees_is_rot90():
    x = images(3)
    out = T.rotate_images(x, np.full(3, 90.0))
    np.testing.assert_allclose(out, np.rot90(x, axes=(2, 3)), atol=1e-5)
    np.testing.assert_allclose(T.rotate_images(x, np.full(3, -90.0)),
                               np.rot90(x, k=-1, axes=(2, 3)), atol=1e-5)


def test_small_rotation_keeps_the_centre_and_moves_the_edge_little():
    x = np.zeros((1, 1, 29, 29), np.float64)  # odd size: the centre is pixel (14, 14)
    x[0, 0, 14, 14] = 1.0
    out = T.rotate_images(x, np.array([7.0]))
    assert out[0, 0, 14, 14] == pytest.approx(1.0)
    # a point 10 px right of the centre, rotated 10 degrees counter-clockwise, lands about
    # 10*sin(10 deg) = 1.7 px up
    x = np.zeros((1, 1, 29, 29), np.float64)
    x[0, 0, 14, 24] = 1.0
    out = T.rotate_images(x, np.array([10.0]))[0, 0]
    r, q = np.unravel_index(np.argmax(out), out.shape)
    assert (r, q) in {(12, 24), (12, 23)}
    assert out.sum() == pytest.approx(1.0, abs=0.02)  # bilinear spreads, keeps the mass


def test_elastic_with_alpha_zero_is_the_identity():
    x = images(4, c=3)
    out = T.ElasticDistortion(alpha=0.0, sigma=4.0)((x, None), T.batch_rng(0, 0, 0))[0]
    np.testing.assert_array_equal(out, x)


def test_elastic_moves_pixels_by_about_what_simard_s_parameters_give():
    x = images(8)
    out = T.ElasticDistortion(34, 4)((x, None), T.batch_rng(0, 0, 0))[0]
    assert not np.array_equal(out, x)
    noise = T.batch_rng(0, 0, 0).uniform(-1, 1, size=(8, 2, 28, 28))
    disp = 34 * T.smooth_fields(noise, 4)
    rms = float(np.sqrt((disp[:, :, 4:-4, 4:-4] ** 2).mean()))
    assert 0.3 < rms < 4.0  # a pixel or two: a warp, neither noise nor nothing
    np.testing.assert_array_equal(out, T.displace_images(x, disp))


def test_a_whole_pixel_displacement_is_a_shift():
    x = images(2)
    disp = np.zeros((2, 2, 28, 28))
    disp[0, 0], disp[0, 1] = -2.0, 1.0  # read from 2 rows up, 1 column right
    disp[1, 0], disp[1, 1] = 1.0, 0.0
    expected = T.shift_images(x, np.array([[2, -1], [-1, 0]]), fill=0.5)
    np.testing.assert_array_equal(T.displace_images(x, disp, fill=0.5), expected)


def test_gaussian_smoothing_matches_a_direct_2d_sum():
    fields = np.random.default_rng(1).uniform(-1, 1, size=(3, 2, 20, 17))
    sigma = 2.5
    k = T.gaussian_kernel1d(sigma)
    assert len(k) == 2 * int(4 * sigma + 0.5) + 1 and k.sum() == pytest.approx(1.0)
    r = len(k) // 2
    padded = np.pad(fields, ((0, 0), (0, 0), (r, r), (r, r)))
    expected = sum(k[a] * k[b] * padded[..., a:a + 20, b:b + 17]
                   for a in range(len(k)) for b in range(len(k)))
    np.testing.assert_allclose(T.smooth_fields(fields, sigma), expected, atol=1e-12)
    np.testing.assert_array_equal(T.smooth_fields(fields, 0.0), fields)


def test_mnist_augment_fills_with_the_normalised_black():
    black = np.zeros((4, 28, 28), np.uint8)
    out = T.mnist_augment()((black, np.arange(4)), T.batch_rng(0, 0, 0))[0]
    np.testing.assert_allclose(out, T.MNIST_BACKGROUND, atol=1e-5)
    normalised = T.mnist_normalize((black, None))[0]
    assert np.all(normalised == np.float32(T.MNIST_BACKGROUND))


# ---- in the loader ------------------------------------------------------------------------------
def batches(loader):
    return [tuple(np.copy(a) for a in b) for b in loader]


@pytest.mark.parametrize("num_workers", [1, 2, 4])
def test_loader_with_workers_gives_the_same_augmented_batches_as_without(num_workers):
    data = uint8_mnist(150)
    augment = T.mnist_augment()
    serial = DataLoader(data, batch_size=32, seed=5, num_workers=0, transform=augment)
    with DataLoader(data, batch_size=32, seed=5, num_workers=num_workers,
                    transform=augment) as threaded:
        for _ in range(2):  # two epochs: epoch 1 is augmented differently from epoch 0
            a, b = batches(serial), batches(threaded)
            assert len(a) == len(b) == 5
            for (xa, ya), (xb, yb) in zip(a, b, strict=True):
                np.testing.assert_array_equal(ya, yb)
                np.testing.assert_array_equal(xa, xb)


def test_augmentation_differs_between_epochs_and_is_reproduced_on_resume():
    data = uint8_mnist(64)
    augment = T.mnist_augment()
    loader = DataLoader(data, batch_size=64, shuffle=False, num_workers=0, transform=augment)
    e0, e1 = batches(loader), batches(loader)
    assert not np.array_equal(e0[0][0], e1[0][0])
    resumed = DataLoader(data, batch_size=64, shuffle=False, num_workers=0, transform=augment)
    resumed.set_epoch(1)
    np.testing.assert_array_equal(batches(resumed)[0][0], e1[0][0])
