"""The one preprocessing contract, shared by training, evaluation, ONNX export, the server and dataset tokenization.

Any image → uint8 RGB array [H, W, 3] a model takes, and back. numpy and Pillow only (no torch): the serving
path imports it. Scaling to [-1, 1] is not done here: it is a one-liner on the torch side
(`tokenizer.model.to_model_range`) and the first node of the exported encoder graph.

Policies:
- `resize`: shorter side to S (bicubic, antialiased), then a centre crop to S×S.
- `native`: keep the pixels, pad right/bottom (edge values) to a multiple of the factor f; `restore` crops back.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from .contract import POLICIES, cover_crop

ImageSource = Union[Image.Image, np.ndarray, bytes, str, Path, BinaryIO]


class InvalidImage(ValueError):
    """The input is not an image Pillow can decode (or decodes to nothing). `reason` is the bare cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"not a decodable image ({reason})")
        self.reason = reason


class ImageTooLarge(ValueError):
    """The image has more pixels than allowed (or trips Pillow's decompression-bomb guard)."""


@dataclass(frozen=True)
class Crop:
    """What `restore` needs to undo `prepare`: the valid region of the model input and the source size, each
    (height, width) like every array shape here."""

    height: int
    width: int
    source_height: int
    source_width: int


def open_image(src: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Decode `src` (bytes, path, file object, PIL image or uint8 array) into an RGB image, EXIF orientation applied.
    A PIL image may still be undecoded (`Image.open`'s lazy result, e.g. after a look at its header): it gets the
    same size check before its pixels are decoded."""
    if isinstance(src, np.ndarray):
        img = Image.fromarray(_array_to_uint8(src))
    else:
        try:
            if isinstance(src, Image.Image):
                img = src
            else:
                img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src)
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageTooLarge(f"image is {img.width}×{img.height} = {img.width * img.height} pixels; "
                                    f"the limit is {max_pixels}")
            img.load()
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise  # a path that cannot be read is the caller's problem to report, not an undecodable image
        except Image.DecompressionBombError as err:
            raise ImageTooLarge(_bomb_message(err, max_pixels)) from None
        except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            if isinstance(err, ImageTooLarge):
                raise
            raise InvalidImage(f"{type(err).__name__}: {err}") from None
    if img.width == 0 or img.height == 0:
        raise InvalidImage("image has zero width or height")
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ImageTooLarge(f"image is {img.width}×{img.height} pixels; the limit is {max_pixels}")
    return to_rgb(ImageOps.exif_transpose(img))


def _bomb_message(err: Exception, max_pixels: int | None) -> str:
    """Pillow refuses images over 2 × its MAX_IMAGE_PIXELS before our own check runs; quote the caller's limit."""
    if max_pixels is None:
        return f"image rejected by Pillow's decompression-bomb guard: {err}"
    size = re.search(r"\((\d+) pixels\)", str(err))  # "Image size (N pixels) exceeds limit of M pixels, ..."
    return f"image is {size.group(1) + ' pixels' if size else 'too large'}; the limit is {max_pixels}"


def _wide_to_uint8(a: np.ndarray) -> np.ndarray:
    """16-bit (or wider integer) grey values → uint8.

    Values above 255 mean the full 16-bit range: the top byte, as image viewers show such files. A file whose
    values all lie in [0, 255] (an 8-bit image saved in a 16-bit container) keeps them, as Pillow's own
    conversion does; shifting those would turn the image black.
    """
    a = a.astype(np.int64)
    if a.size and a.max() > 255:
        a = a >> 8
    return np.clip(a, 0, 255).astype(np.uint8)


def _array_to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return _wide_to_uint8(a)
    raise InvalidImage(f"arrays must be uint8 (or uint16) [H, W] or [H, W, 3|4], got {a.dtype} {a.shape}")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB. Transparency is composited over white; 16-bit greys by `_wide_to_uint8`; floats
    clipped."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        return Image.fromarray(_wide_to_uint8(np.asarray(img)), "L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def prepare(src: ImageSource, policy: str = "resize", size: int = 256, factor: int = 8,
            max_pixels: int | None = None) -> tuple[np.ndarray, Crop]:
    """Image → (uint8 [H, W, 3] model input, Crop). `resize` gives size×size; `native` a multiple of `factor`."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    img = open_image(src, max_pixels=max_pixels)
    sw, sh = img.size
    if policy == "resize":
        if size % factor:
            raise ValueError(f"size {size} must be a multiple of the model factor {factor}")
        nw, nh, _, _ = cover_crop(sw, sh, size, size)
        # The source limit must hold for the scaled copy too: a 96-byte 4000×1 PNG scaled to a 256-pixel shorter
        # side is 1,024,000×256 (~0.8 GB) before the crop.
        limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
        if limit is not None and nw * nh > max(limit, size * size):
            raise ImageTooLarge(f"a {sw}×{sh} image scaled to a {size}-pixel shorter side would be {nw}×{nh} = "
                                f"{nw * nh} pixels, over the limit of {limit}: its aspect ratio is too extreme for "
                                f"policy 'resize'; crop it closer to square first")
        return fit(img, size, size), Crop(size, size, sh, sw)
    arr = np.asarray(img)
    ph, pw = -sh % factor, -sw % factor
    if ph or pw:
        arr = np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return np.ascontiguousarray(arr), Crop(sh, sw, sh, sw)


def prepare_batch(images: ImageSource | Sequence[ImageSource], policy: str = "resize", size: int = 256,
                  factor: int = 8, max_pixels: int | None = None) -> tuple[np.ndarray, list[Crop]]:
    """One image, a list of them, or a uint8 [B, H, W, 3] array → (uint8 [B, H, W, 3] batch, crops), by `prepare`.

    The entry of both tokenizers (`OnnxTokenizer.encode`, `Tokenizer.encode` given images). `native` keeps each
    image's size (padded to a multiple of f), so one batch must share one padded size.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if isinstance(images, np.ndarray):
        items = list(images) if images.ndim == 4 else [images]
    else:
        items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("no images given")
    pairs = [prepare(src, policy=policy, size=size, factor=factor, max_pixels=max_pixels) for src in items]
    shapes = {a.shape for a, _ in pairs}
    if len(shapes) > 1:
        raise ValueError(f"policy 'native' gave images of different sizes {sorted(shapes)}; encode them one "
                         "call each, or use policy 'resize'")
    return np.stack([a for a, _ in pairs]), [c for _, c in pairs]


def fit(img: Image.Image, height: int, width: int) -> np.ndarray:
    """RGB image → uint8 [height, width, 3]: scale to cover (bicubic), centre crop (`resize` for any aspect)."""
    nw, nh, left, top = cover_crop(img.width, img.height, height, width)
    if (nw, nh) != img.size:
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    if (left, top, nw, nh) != (0, 0, width, height):  # a crop copies the image even when it keeps all of it
        img = img.crop((left, top, left + width, top + height))
    return np.ascontiguousarray(np.asarray(img))


def save_grid(rows: Sequence[Sequence[np.ndarray]], path: str | Path, labels: Sequence[str] | None = None,
              cols: int | None = None) -> Path:
    """One PNG of uint8 [H, W, 3] images (all one size), a row per entry of `rows`, `cols` wide (default: the
    longest row; short rows are padded white), each row optionally labelled at its top left. Evaluation (real | reconstruction, PSNR), training grids and the
    generation example all write their grids with it."""
    from PIL import ImageDraw

    rows = [list(r) for r in rows]
    if not rows or not rows[0]:
        raise ValueError("save_grid needs at least one image")
    h, w, _ = rows[0][0].shape
    cols = max([len(r) for r in rows] + [cols or 0])
    canvas = Image.new("RGB", (cols * w, len(rows) * h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            canvas.paste(Image.fromarray(np.ascontiguousarray(im), "RGB"), (j * w, i * h))
        if labels is not None:
            draw.text((4, i * h + 4), labels[i], fill=(255, 255, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def restore(arr: np.ndarray, crop: Crop | None = None) -> Image.Image:
    """uint8 [H, W, 3] model output → RGB image, cropped back to the valid region when `crop` is given."""
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] array, got {arr.dtype} {arr.shape}")
    if crop is not None:
        arr = arr[: crop.height, : crop.width]
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")
