"""Decoding: what the model sees for every kind of file, and a clear error for every bad one."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
from PIL import Image

from datasette_imgsearch.images import pixels


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def red_on_transparent(mode: str) -> Image.Image:
    """Left half opaque red, right half fully transparent, in ``mode``."""
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 20, 20))
    return rgba.convert(mode)


@pytest.mark.parametrize(
    "mode,fmt,left,right",
    [
        ("RGB", "PNG", (255, 0, 0), (0, 0, 0)),
        ("RGBA", "PNG", (255, 0, 0), (255, 255, 255)),
        ("LA", "PNG", (76, 76, 76), (255, 255, 255)),
        ("RGBA", "WEBP", (255, 0, 0), (255, 255, 255)),
        ("RGB", "JPEG", (255, 0, 0), (0, 0, 0)),
        ("CMYK", "JPEG", (255, 0, 0), (0, 0, 0)),
        ("CMYK", "TIFF", (255, 0, 0), (0, 0, 0)),
        ("L", "PNG", (76, 76, 76), (0, 0, 0)),
        ("1", "BMP", (255, 255, 255), (0, 0, 0)),
    ],
)
def test_every_file_mode_becomes_rgb_with_transparency_on_white(mode: str, fmt: str, left: tuple, right: tuple) -> None:
    source = red_on_transparent("RGBA")
    if mode == "1":
        source = Image.new("RGB", (40, 20))
        source.paste((255, 255, 255), (0, 0, 20, 20))
    data = encode(source.convert(mode), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    decoded = pixels.decode(data)
    assert decoded.image.mode == "RGB"
    assert np.allclose(decoded.image.getpixel((5, 10)), left, atol=12)
    assert np.allclose(decoded.image.getpixel((35, 10)), right, atol=12)


@pytest.mark.parametrize("mode", ["PA", "RGBa", "LA"])
def test_in_memory_modes_with_alpha_composite_on_white(mode: str) -> None:
    image = red_on_transparent(mode)
    rgb = pixels.to_rgb(image)
    assert rgb.mode == "RGB"
    assert np.allclose(rgb.getpixel((35, 10)), (255, 255, 255), atol=12)
    assert rgb.getpixel((5, 10)) != (255, 255, 255)


def test_gif_transparency_is_white() -> None:
    image = Image.new("P", (40, 20), 1)
    image.putpalette([255, 0, 0, 0, 0, 0])
    image.paste(0, (0, 0, 20, 20))  # index 0 is red; index 1 (black) is transparent
    decoded = pixels.decode(encode(image, "GIF", transparency=1))
    assert np.allclose(decoded.image.getpixel((35, 10)), (255, 255, 255), atol=8)
    assert np.allclose(decoded.image.getpixel((5, 10)), (255, 0, 0), atol=40)


def test_sixteen_bit_greyscale_keeps_its_contrast() -> None:
    values = np.zeros((10, 20), dtype=np.uint16)
    values[:, 10:] = 65535
    values[:, :10] = 16384
    data = encode(Image.fromarray(values), "PNG")
    image = pixels.decode(data).image
    assert image.getpixel((15, 5)) == (255, 255, 255)
    assert 60 <= image.getpixel((5, 5))[0] <= 68  # a quarter grey, not clipped to white


def test_the_first_frame_of_an_animation() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((0, 0, 255), (255, 0, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = pixels.decode(buffer.getvalue())
    assert np.allclose(decoded.image.getpixel((8, 8)), (0, 0, 255), atol=8)


@pytest.mark.parametrize(
    "orientation,size,top_left",
    [(1, (60, 20), (255, 0, 0)), (6, (20, 60), (255, 0, 0)), (8, (20, 60), (0, 0, 255)), (3, (60, 20), (0, 0, 255))],
)
def test_exif_orientation_is_applied(orientation: int, size: tuple[int, int], top_left: tuple[int, int, int]) -> None:
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = pixels.decode(encode(image, "JPEG", exif=exif, quality=95))
    assert decoded.image.size == size
    assert (decoded.width, decoded.height) == size
    assert np.allclose(decoded.image.getpixel((2, 2)), top_left, atol=40)


def test_exif_facts_date_camera_and_gps() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Canon\x00"
    exif[0x0110] = "EOS 5D"
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 18:30:05"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (51.0, 30.0, 0.0)
    gps[3], gps[4] = "W", (0.0, 7.0, 30.0)
    exif[0x010E] = "Shop front on Rue Oberkampf"
    exif[0x9C9E] = "café;signs\x00".encode("utf-16-le")  # XPKeywords, as Windows writes it
    facts = pixels.decode(encode(Image.new("RGB", (8, 8)), "JPEG", exif=exif)).facts
    assert facts == {
        "taken": "2021-07-04T18:30:05",
        "camera_make": "Canon",
        "camera_model": "EOS 5D",
        "latitude": 51.5,
        "longitude": -0.125,
        "description": "Shop front on Rue Oberkampf",
        "keywords": "café;signs",
    }


def test_no_exif_means_no_facts() -> None:
    facts = pixels.decode(encode(Image.new("RGB", (8, 8)), "PNG")).facts
    assert facts == {"taken": None, "camera_make": None, "camera_model": None, "latitude": None, "longitude": None,
                     "description": None, "keywords": None}


def jpeg(size=(64, 48)) -> bytes:
    return encode(Image.new("RGB", size, (10, 200, 30)), "JPEG")


@pytest.mark.parametrize(
    "data,kind,message",
    [
        (b"", "empty", "empty"),
        (b"this is a text file, not a picture", "not-an-image", "not a recognised image format"),
        (b"%PDF-1.4 fake", "not-an-image", "not a recognised image format"),
        (jpeg()[:300], "corrupt", "cannot"),
        (encode(Image.new("RGB", (64, 48)), "PNG")[:60], "corrupt", "cannot"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not-an-image", "not a recognised"),
        # a chunk header whose length runs past the end of the file
        (b"\x89PNG\r\n\x1a\n" + random.Random(344).randbytes(200), "corrupt", "cannot read the image header"),
    ],
    ids=["zero-bytes", "text", "pdf", "truncated-jpeg", "truncated-png", "garbage-png", "png-chunk-past-the-end"],
)
def test_bad_bytes_raise_a_clear_error(data: bytes, kind: str, message: str) -> None:
    with pytest.raises(pixels.ImageError) as raised:
        pixels.decode(data)
    assert raised.value.kind == kind
    assert message in raised.value.message


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = encode(Image.new("1", (12000, 12000)), "PNG")  # 144 megapixels in a few kilobytes
    assert len(bomb) < 100_000
    with pytest.raises(pixels.ImageError) as raised:
        pixels.decode(bomb, max_megapixels=50)
    assert raised.value.kind == "too-large"
    assert "144 megapixels, above the 50 megapixel cap" in raised.value.message


@pytest.mark.parametrize("size,shrunk", [((4000, 3000), (500, 375)), ((3000, 4000), (375, 500)), ((640, 480), (320, 240)),
                                          ((300, 200), (300, 200))])
def test_draft_decoding_keeps_the_shortest_and_longest_sides_large_enough(size, shrunk) -> None:
    data = encode(Image.new("RGB", size, (200, 10, 10)), "JPEG")
    decoded = pixels.decode(data, shrink_to=(224, 256))
    assert decoded.image.size == shrunk
    assert (decoded.width, decoded.height) == size  # the facts keep the real size


def test_thumbnail_fits_the_box_and_is_a_jpeg() -> None:
    data = pixels.thumbnail(Image.new("RGB", (800, 400), (1, 2, 3)), 256)
    small = Image.open(io.BytesIO(data))
    assert small.format == "JPEG"
    assert small.size == (256, 128)


def test_unreadable_paths_raise_image_errors(tmp_path) -> None:
    with pytest.raises(pixels.ImageError) as raised:
        pixels.read_bytes(tmp_path / "missing.jpg")
    assert raised.value.kind == "unreadable"


@pytest.mark.parametrize("kind", ["a folder", "a FIFO", "a link to /dev/zero"])
def test_what_is_not_a_regular_file_is_never_read(tmp_path, kind: str) -> None:
    path = tmp_path / "x.jpg"
    if kind == "a folder":
        path.mkdir()
    elif kind == "a FIFO":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(pixels.ImageError) as raised:
        pixels.read_bytes(path)
    assert raised.value.kind == "not-a-file"


def test_a_file_larger_than_any_image_under_the_cap_is_refused_after_the_cap(tmp_path) -> None:
    path = tmp_path / "huge.jpg"
    path.write_bytes(b"\xff" * 2_000_001)
    with pytest.raises(pixels.ImageError, match="larger than 2 MB") as raised:
        pixels.read_bytes(path, 2_000_000)
    assert raised.value.kind == "too-large"


def test_a_colour_key_is_composited_on_white() -> None:
    picture = Image.new("RGB", (40, 30), (0, 255, 0))
    picture.paste((200, 0, 0), (10, 10, 20, 20))
    decoded = pixels.decode(encode(picture, "PNG", transparency=(0, 255, 0)))
    assert decoded.image.getpixel((0, 0)) == (255, 255, 255) and decoded.image.getpixel((15, 15)) == (200, 0, 0)


def test_sixteen_bit_grey_transparency_is_white() -> None:
    grey = Image.fromarray(np.full((30, 40), 1000, dtype=np.uint16))
    grey.paste(50000, (10, 10, 20, 20))
    decoded = pixels.decode(encode(grey, "PNG", transparency=1000))
    opaque = pixels.decode(encode(grey, "PNG"))
    assert decoded.image.getpixel((0, 0)) == (255, 255, 255) != opaque.image.getpixel((0, 0))
    assert decoded.image.getpixel((15, 15)) == opaque.image.getpixel((15, 15)) != (255, 255, 255)
