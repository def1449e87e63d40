"""tokenizer.preprocess: every image mode → RGB uint8, EXIF orientation, the `resize` and `native` policies,
`restore`, input kinds, and the error types. All fixtures are built here (plus the committed photos)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vqtok.tokenizer.preprocess import Crop, ImageTooLarge, InvalidImage, open_image, prepare, restore, to_rgb


def rgb(src) -> np.ndarray:
    out = np.asarray(open_image(src))
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[-1] == 3
    return out


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -- modes ------------------------------------------------------------------------------------------------------------

def test_mode_L():
    img = Image.fromarray(np.array([[0, 17], [128, 255]], dtype=np.uint8), "L")
    out = rgb(img)
    assert out.shape == (2, 2, 3)
    assert out[..., 0].tolist() == [[0, 17], [128, 255]]
    assert (out == out[..., :1]).all()  # grey: R = G = B


def test_mode_LA_composites_over_white():
    img = Image.new("LA", (3, 1))
    img.putdata([(0, 255), (0, 0), (0, 128)])  # opaque black, transparent, half-transparent black
    out = rgb(img)[0]
    assert out[0].tolist() == [0, 0, 0]
    assert out[1].tolist() == [255, 255, 255]
    assert 120 <= out[2, 0] <= 135 and (out[2] == out[2, 0]).all()


def test_mode_P_and_P_with_transparency():
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((1, 0), 1)
    assert rgb(img)[0].tolist() == [[255, 0, 0], [0, 0, 255]]
    img.info["transparency"] = 1  # palette index 1 is transparent → white
    assert rgb(img)[0].tolist() == [[255, 0, 0], [255, 255, 255]]
    for fmt in ("PNG", "GIF"):  # the same through real files
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        assert Image.open(io.BytesIO(buf.getvalue())).mode == "P"
        assert rgb(buf.getvalue())[0].tolist() == [[255, 0, 0], [255, 255, 255]], fmt


def test_mode_RGBA_transparent_is_white():
    img = Image.new("RGBA", (3, 1))
    img.putdata([(10, 20, 30, 255), (10, 20, 30, 0), (0, 0, 0, 0)])
    out = rgb(img)[0]
    assert out.tolist() == [[10, 20, 30], [255, 255, 255], [255, 255, 255]]
    assert rgb(png_bytes(img))[0].tolist() == out.tolist()


def test_mode_CMYK():
    img = Image.new("CMYK", (4, 1))
    img.putdata([(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)])
    assert rgb(img)[0].tolist() == [[0, 255, 255], [255, 0, 255], [0, 0, 0], [255, 255, 255]]


def test_mode_I16_rescales_16_bit():
    a = np.array([[65535, 0], [256, 32768]], dtype=np.uint16)
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    expected = [[255, 0], [1, 128]]
    assert rgb(img)[..., 0].tolist() == expected
    data = png_bytes(img)  # a 16-bit grey PNG
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = rgb(data)
    assert out[..., 0].tolist() == expected and (out == out[..., :1]).all()
    assert rgb(Image.new("I;16B", (1, 1), 65535))[0, 0].tolist() == [255, 255, 255]


def test_16_bit_png_holding_8_bit_values_keeps_them():
    """An 8-bit image saved in a 16-bit container (values 1..255) must not turn black (the top byte is 0)."""
    a = np.random.default_rng(0).integers(1, 256, (16, 24)).astype(np.uint16)
    data = png_bytes(Image.fromarray(a))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit grey PNG
    out = rgb(data)
    assert out[..., 0].tolist() == a.tolist() and (out == out[..., :1]).all()
    assert np.asarray(Image.open(io.BytesIO(data)).convert("L")).tolist() == a.tolist()  # what Pillow shows
    assert rgb(a)[..., 0].tolist() == a.tolist()  # the same rule for uint16 arrays


def test_mode_I_32_bit():
    wide = Image.fromarray(np.array([[65535, 0], [512, 1000]], dtype=np.int32))
    assert wide.mode == "I"
    assert rgb(wide)[..., 0].tolist() == [[255, 0], [2, 3]]  # 16-bit range values → >> 8
    narrow = Image.fromarray(np.array([[200, 0], [17, 255]], dtype=np.int32))
    assert rgb(narrow)[..., 0].tolist() == [[200, 0], [17, 255]]  # 8-bit values kept


def test_mode_F_clips_to_8_bit_range():
    img = Image.fromarray(np.array([[128.0, -5.0], [300.0, 64.0]], dtype=np.float32))
    assert img.mode == "F"
    assert rgb(img)[..., 0].tolist() == [[128, 0], [255, 64]]


def test_mode_1():
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    assert rgb(img)[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_to_rgb_keeps_rgb_untouched():
    img = Image.new("RGB", (2, 2), (1, 2, 3))
    assert to_rgb(img) is img


# -- EXIF orientation ------------------------------------------------------------------------------------------------

def exif_jpeg(orientation: int) -> bytes:
    """40×20 grey JPEG with a red 10×10 block in its stored top-left corner, tagged with `orientation`."""
    img = Image.new("RGB", (40, 20), (128, 128, 128))
    img.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def red_corner(a: np.ndarray) -> str:
    h, w = a.shape[:2]
    corners = {"top-left": a[2:5, 2:5], "top-right": a[2:5, w - 5:w - 2],
               "bottom-left": a[h - 5:h - 2, 2:5], "bottom-right": a[h - 5:h - 2, w - 5:w - 2]}
    red = [name for name, patch in corners.items()
           if patch[..., 0].mean() > 200 and patch[..., 1].mean() < 60 and patch[..., 2].mean() < 60]
    assert len(red) == 1, red
    return red[0]


@pytest.mark.parametrize("orientation,size,corner", [
    (1, (40, 20), "top-left"),
    (3, (40, 20), "bottom-right"),   # rotated 180°
    (6, (20, 40), "top-right"),      # stored rotated 90° counter-clockwise: display turns it clockwise
    (8, (20, 40), "bottom-left"),    # stored rotated 90° clockwise
    (2, (40, 20), "top-right"),      # mirrored
])
def test_exif_orientation_is_applied(orientation, size, corner):
    data = exif_jpeg(orientation)
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation
    img = open_image(data)
    assert img.size == size
    assert red_corner(np.asarray(img)) == corner
    arr, crop = prepare(data, policy="native", factor=4)
    assert (crop.source_width, crop.source_height) == size
    assert red_corner(arr) == corner


# -- policies ---------------------------------------------------------------------------------------------------------

def bands(width: int, height: int, vertical: bool = True) -> Image.Image:
    """Three equal bands green | red | blue (left to right, or top to bottom)."""
    a = np.zeros((height, width, 3), np.uint8)
    n = width if vertical else height
    for i, colour in enumerate([(0, 255, 0), (255, 0, 0), (0, 0, 255)]):
        sl = slice(i * n // 3, (i + 1) * n // 3)
        if vertical:
            a[:, sl] = colour
        else:
            a[sl, :] = colour
    return Image.fromarray(a)


@pytest.mark.parametrize("vertical", [True, False], ids=["landscape", "portrait"])
def test_resize_centre_crop(vertical):
    img = bands(300, 100) if vertical else bands(100, 300, vertical=False)
    arr, crop = prepare(img, policy="resize", size=32, factor=8)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8 and arr.flags["C_CONTIGUOUS"]
    assert crop == Crop(32, 32, img.height, img.width)
    # The centre crop is exactly the middle (red) band: shorter side 100 → 32, the long side 300 → 96.
    inner = arr[4:-4, 4:-4]
    assert inner[..., 0].min() > 200 and inner[..., 1].max() < 60 and inner[..., 2].max() < 60


def test_resize_small_image_is_upscaled():
    img = Image.new("RGB", (10, 20), (9, 99, 199))
    arr, crop = prepare(img, policy="resize", size=32, factor=8)
    assert arr.shape == (32, 32, 3)
    assert crop == Crop(height=32, width=32, source_height=20, source_width=10)
    assert np.abs(arr.astype(int) - [9, 99, 199]).max() <= 1


def test_resize_keeps_pixels_of_an_exact_size_image():
    a = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    arr, _ = prepare(png_bytes(Image.fromarray(a)), policy="resize", size=32, factor=8)
    assert np.array_equal(arr, a)


def test_resize_on_a_fixture_photo(photos):
    for p in photos[:2]:
        arr, crop = prepare(p, policy="resize", size=64, factor=8)
        assert arr.shape == (64, 64, 3)
        src = Image.open(p)
        assert (crop.source_width, crop.source_height) == src.size


@pytest.mark.parametrize("w,h,f", [(37, 50, 8), (40, 48, 8), (17, 9, 16), (1, 1, 4)])
def test_native_pads_and_restore_crops_back(w, h, f):
    a = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr, crop = prepare(png_bytes(Image.fromarray(a)), policy="native", factor=f)
    H, W = -(-h // f) * f, -(-w // f) * f
    assert arr.shape == (H, W, 3) and arr.dtype == np.uint8
    assert crop == Crop(h, w, h, w)
    assert np.array_equal(arr[:h, :w], a)
    # Edge padding: the padded columns repeat the last column, the padded rows the last row.
    assert (arr[:h, w:] == a[:, -1:]).all()
    assert (arr[h:, :w] == a[-1:, :]).all()
    back = restore(arr, crop)
    assert back.mode == "RGB" and back.size == (w, h)
    assert np.array_equal(np.asarray(back), a)


def test_restore_checks_its_input():
    assert restore(np.zeros((8, 8, 3), np.uint8)).size == (8, 8)
    for bad in (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8)):
        with pytest.raises(ValueError):
            restore(bad)


def test_bad_policy_and_size():
    img = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="policy"):
        prepare(img, policy="stretch")
    with pytest.raises(ValueError, match="multiple"):
        prepare(img, policy="resize", size=30, factor=8)


# -- input kinds -------------------------------------------------------------------------------------------------------

def test_input_kinds_agree(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(a))
    path = tmp_path / "x.png"
    path.write_bytes(data)
    sources = [data, bytearray(data), memoryview(data), path, str(path), io.BytesIO(data), Image.fromarray(a), a]
    for src in sources:
        assert np.array_equal(rgb(src), a), type(src)
    with path.open("rb") as fh:
        assert np.array_equal(rgb(fh), a)


def test_array_inputs():
    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    assert rgb(grey)[..., 1].tolist() == grey.tolist()
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (1, 2, 3, 255)
    assert rgb(rgba)[0].tolist() == [[1, 2, 3], [255, 255, 255]]
    wide = np.array([[65535, 256]], dtype=np.uint16)
    assert rgb(wide)[0, :, 0].tolist() == [255, 1]
    for bad in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 3), np.int64)):
        with pytest.raises(InvalidImage):
            open_image(bad)


# -- errors ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"GIF89a", b"hello, not an image", bytes(range(256)) * 4],
                         ids=["empty", "header-only", "text", "noise"])
def test_undecodable_bytes_raise_invalid_image(data):
    with pytest.raises(InvalidImage):
        prepare(data)
    assert issubclass(InvalidImage, ValueError)


def test_truncated_files_raise_invalid_image(photos):
    jpeg = photos[0].read_bytes()
    with pytest.raises(InvalidImage):
        prepare(jpeg[: len(jpeg) // 3])
    png = png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    with pytest.raises(InvalidImage):
        prepare(png[:60])


def test_zero_byte_file_raises_invalid_image(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(InvalidImage):
        prepare(p)


def test_too_many_pixels_raise_image_too_large():
    img = Image.new("RGB", (20, 30))
    data = png_bytes(img)
    for src in (data, img, np.zeros((30, 20, 3), np.uint8)):
        with pytest.raises(ImageTooLarge, match="20×30"):
            prepare(src, max_pixels=599)
        arr, _ = prepare(src, policy="native", factor=2, max_pixels=600)
        assert arr.shape == (30, 20, 3)
    assert issubclass(ImageTooLarge, ValueError)


def test_decompression_bomb_guard_maps_to_image_too_large(monkeypatch):
    data = png_bytes(Image.new("RGB", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10 000 px > 2 × limit: Pillow refuses to open
    with pytest.raises(ImageTooLarge):
        prepare(data)
    with pytest.raises(ImageTooLarge) as info:  # the caller's limit is quoted, not Pillow's
        prepare(data, max_pixels=1500)
    assert str(info.value) == "image is 10000 pixels; the limit is 1500"


def test_missing_file_is_reported_as_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        prepare(tmp_path / "missing.jpg")
    assert "missing.jpg" in str(info.value) and "decodable" not in str(info.value)
    with pytest.raises(IsADirectoryError):
        prepare(tmp_path)


def test_invalid_image_message_says_it_once():
    with pytest.raises(InvalidImage) as info:
        prepare(b"hello, not an image")
    assert str(info.value).count("not a decodable image") == 1
    assert "decodable" not in info.value.reason and "UnidentifiedImageError" in info.value.reason


def test_save_grid_rows_labels_and_padding(tmp_path):
    from vqtok.tokenizer.preprocess import save_grid

    a, b = np.zeros((8, 6, 3), np.uint8), np.full((8, 6, 3), 100, np.uint8)
    path = save_grid([(a, b), (b,)], tmp_path / "sub" / "grid.png", cols=3)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (16, 18, 3)
    assert (grid[8:, :6] == 100).all() and (grid[8:, 6:] == 255).all() and (grid[:8, 12:] == 255).all()
    labelled = np.asarray(Image.open(save_grid([(a, a)], tmp_path / "l.png", labels=["21.00 dB"])))
    assert labelled.shape == (8, 12, 3) and labelled.any()                              # the label was drawn
