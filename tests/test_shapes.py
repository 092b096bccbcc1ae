"""HWC (as users write shapes and most files store images) <-> CHW (as arrays are kept)."""

from __future__ import annotations

import numpy as np

from nettrain.shapes import format_shape, image_to_chw, images_to_nchw, internal_to_user_shape, user_to_internal_shape


def test_shapes_as_written_and_as_kept():
    assert user_to_internal_shape([28, 32, 3]) == (3, 28, 32)
    assert user_to_internal_shape([28, 32]) == (28, 32)
    assert user_to_internal_shape([10]) == (10,)
    for user in ([28, 32, 3], [5, 7], [9]):
        assert internal_to_user_shape(user_to_internal_shape(user)) == user


def test_format_shape_reads_like_the_config():
    assert format_shape((3, 28, 32)) == "28x32x3"
    assert format_shape((5, 7)) == "5x7" and format_shape((9,)) == "9" and format_shape(None) == "?"


def test_image_to_chw_moves_pixels_not_values():
    hwc = np.arange(4 * 5 * 3).reshape(4, 5, 3)
    chw = image_to_chw(hwc)
    assert chw.shape == (3, 4, 5)
    for c, h, w in [(0, 0, 0), (2, 3, 4), (1, 2, 0)]:
        assert chw[c, h, w] == hwc[h, w, c]
    grey = np.arange(20).reshape(4, 5)
    np.testing.assert_array_equal(image_to_chw(grey)[0], grey)
    assert np.shares_memory(chw, hwc)  # a view: callers decide when to copy


def test_images_to_nchw_for_colour_and_grey_stacks():
    nhwc = np.arange(2 * 4 * 5 * 3).reshape(2, 4, 5, 3)
    nchw = images_to_nchw(nhwc)
    assert nchw.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(nchw[1], image_to_chw(nhwc[1]))
    grey = np.arange(2 * 4 * 5).reshape(2, 4, 5)
    assert images_to_nchw(grey).shape == (2, 1, 4, 5)
    np.testing.assert_array_equal(images_to_nchw(grey)[:, 0], grey)
