"""Preprocessing: every awkward input becomes a clean RGB square or a one-line reason."""

import numpy as np

from liquidgen.pipeline.images import Preprocess, load_image


def test_awkward_inputs_are_converted_or_explained(bad_images):
    folder, expected = bad_images
    pre = Preprocess(resolution=64)
    for name, reason in expected.items():
        result = load_image(str(folder / name), pre)
        if reason is None:
            assert isinstance(result, np.ndarray), f"{name}: {result}"
            assert result.shape == (3, 64, 64) and result.dtype == np.uint8
        else:
            assert isinstance(result, str) and result.startswith(reason), f"{name}: {result!r}"
            assert "\n" not in result


def test_bytes_and_paths_give_the_same_pixels(bad_images):
    folder, _ = bad_images
    pre = Preprocess(resolution=48)
    from_path = load_image(str(folder / "good.jpg"), pre)
    from_bytes = load_image((folder / "good.jpg").read_bytes(), pre)
    assert np.array_equal(from_path, from_bytes)


def test_non_square_images_are_centre_cropped(tmp_path):
    from PIL import Image

    img = np.zeros((40, 120, 3), np.uint8)
    img[:, 40:80] = 255  # a white centre band, a third of the width
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = load_image(str(tmp_path / "wide.png"), Preprocess(resolution=40))
    assert out.shape == (3, 40, 40)
    assert out.mean() > 250  # the crop is the centre band


def test_alpha_is_composited_on_white(tmp_path):
    from PIL import Image

    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    out = load_image(str(tmp_path / "clear.png"), Preprocess(resolution=32))
    assert out.min() == 255
