"""Images: decoding with limits, resize/crop/normalise per encoder, train-time augmentation.

Tensors are (channels=3, height, width), float32, normalised with the encoder's mean and std.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

from ..errors import MediaError
from ._source import media_source

# A 12k x 12k photo; anything larger is almost surely a decompression bomb.
MAX_IMAGE_PIXELS = 144_000_000
# Long side / short side. Resizing the short side of a 1 x 100000 strip up to an encoder's 256 px would make a
# 25-gigapixel intermediate; a 20:1 panorama still resizes to 256 x 5120.
MAX_ASPECT_RATIO = 20.0
# Transparent pixels are composited onto this colour: what hides under alpha 0 is arbitrary (often black).
WHITE = (255, 255, 255)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(
    path: str | os.PathLike | BinaryIO,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    background: tuple[int, int, int] = WHITE,
) -> Image.Image:
    """Decode an image file to RGB, refusing files that are missing, corrupt, truncated, too large or too thin.

    The pixel count and aspect ratio are checked from the header, before any pixel is decoded. Transparent images
    (RGBA, LA, palette with transparency) are composited onto ``background``.

    Args:
        path: a file path, or a seekable binary file object (e.g. an upload held in a ``BytesIO``); messages name
            it by its ``name`` attribute where it has one.

    Raises:
        MediaError: with ``kind`` one of ``missing_file``, ``unreadable_file``, ``corrupt_image``, ``too_many_pixels``,
            ``extreme_aspect_ratio``.
    """
    source, path = media_source(path)
    if isinstance(source, str) and not os.path.exists(path):
        raise MediaError("missing_file", path, f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            # Pillow's own guard warns over Image.MAX_IMAGE_PIXELS (89 M); the limit here is max_pixels, checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except PermissionError as e:
        raise MediaError("unreadable_file", path, f"{path}: cannot read ({e.strerror}); fix its permissions") from e
    except IsADirectoryError as e:
        raise MediaError("unreadable_file", path, f"{path}: is a folder, not an image file") from e
    except Image.DecompressionBombError as e:
        # Over twice Image.MAX_IMAGE_PIXELS Pillow refuses to open the file at all, whatever max_pixels says.
        raise MediaError(
            "too_many_pixels", path,
            f"{path}: {e} (Pillow's hard limit, 2 x PIL.Image.MAX_IMAGE_PIXELS); downscale the image",
        ) from e
    except (UnidentifiedImageError, OSError) as e:
        raise MediaError("corrupt_image", path, f"{path}: not a readable image ({e}); re-export or remove it") from e
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise MediaError(
                "too_many_pixels", path,
                f"{path}: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
                "(a decompression bomb guard); downscale the image or raise max_pixels",
            )
        if max(w, h) > max_aspect_ratio * max(1, min(w, h)):
            raise MediaError(
                "extreme_aspect_ratio", path,
                f"{path}: {w}x{h} is more than {max_aspect_ratio:g} times longer than wide, and resizing its short "
                "side would need a huge intermediate image; crop it",
            )
        try:
            img.load()
            if img.mode.startswith("I;16"):
                # Pillow's convert clips 16-bit values at 255 instead of scaling them (a 16-bit PNG turns white).
                return Image.fromarray(np.round(np.asarray(img, dtype=np.float32) / 257).astype(np.uint8)).convert("RGB")
            # Phones store portrait photos as landscape pixels plus an EXIF orientation tag.
            return _flatten(ImageOps.exif_transpose(img), background)
        except (OSError, SyntaxError, ValueError) as e:
            raise MediaError("corrupt_image", path, f"{path}: image data is corrupt or truncated ({e}); re-export or remove it") from e


def _flatten(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB, with any transparency composited onto ``background`` (not onto the arbitrary colour under alpha 0)."""
    if img.mode == "P" and "transparency" in img.info or img.mode in ("PA", "La", "LA", "RGBa"):
        # Converting a palette image with transparency straight to RGB drops the alpha (and warns every time).
        img = img.convert("RGBA")
    if img.mode != "RGBA":
        return img.convert("RGB")
    out = Image.new("RGB", img.size, background)
    out.paste(img, mask=img.getchannel("A"))
    return out


@dataclass(frozen=True)
class ImageAugment:
    """Train-time image augmentation; each part is off when its strength is 0."""

    scale: tuple[float, float] = (0.08, 1.0)  # random resized crop: area fraction range (Inception-style)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random resized crop: aspect-ratio range
    hflip: float = 0.5  # probability of a horizontal flip
    brightness: float = 0.4  # colour jitter: factor drawn from [1-b, 1+b]
    contrast: float = 0.4
    saturation: float = 0.4


@dataclass(frozen=True)
class ImageTransform:
    """Image -> normalised tensor (3, size, size).

    Evaluation: resize the short side to ``resize`` (default size/0.875, as timm does), centre-crop ``size``.
    Training with ``augment``: random resized crop to ``size``, flip, colour jitter; then normalise.
    """

    size: int = 224  # output side in pixels
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875  # evaluation: centre crop fraction of the resized short side
    augment: ImageAugment | None = None  # None: no augmentation even in training

    def key(self) -> str:
        """What determines the evaluation output; part of feature-cache keys."""
        return f"img:{self.size}:{self.mean}:{self.std}:{self.crop_pct}"

    def __call__(self, img: Image.Image, train: bool = False, rng: np.random.Generator | None = None) -> torch.Tensor:
        if train and self.augment is not None:
            rng = rng if rng is not None else np.random.default_rng()
            img = _random_resized_crop(img, self.size, self.augment, rng)
            if rng.random() < self.augment.hflip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            img = _colour_jitter(img, self.augment, rng)
        else:
            resize = int(math.floor(self.size / self.crop_pct))
            img = _resize_short_side(img, resize)
            img = _center_crop(img, self.size)
        return to_tensor(img, self.mean, self.std)


def to_tensor(img: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) float32 tensor, ``(x/255 - mean) / std``."""
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _resize_short_side(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    scale = side / min(w, h)
    return img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling.BICUBIC)


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _random_resized_crop(img: Image.Image, size: int, aug: ImageAugment, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    area = w * h
    log_ratio = (math.log(aug.ratio[0]), math.log(aug.ratio[1]))
    for _ in range(10):  # as torchvision: try 10 times, then fall back to a centre crop
        target = area * rng.uniform(*aug.scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
    return _center_crop(_resize_short_side(img, size), size)


def _colour_jitter(img: Image.Image, aug: ImageAugment, rng: np.random.Generator) -> Image.Image:
    for strength, enhancer in (
        (aug.brightness, ImageEnhance.Brightness),
        (aug.contrast, ImageEnhance.Contrast),
        (aug.saturation, ImageEnhance.Color),
    ):
        if strength > 0:
            img = enhancer(img).enhance(float(rng.uniform(max(0.0, 1 - strength), 1 + strength)))
    return img

