"""Reading image files, with errors that name the file and say what to do."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlpeft.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode ``path``; a missing or unreadable file raises :class:`DatasetError`."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except FileNotFoundError:
        raise DatasetError(
            f"Image file not found: '{path}'. The dataset lists it but it is not on disk; "
            "run `vlpeft datasets check` to list every missing file."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(
            f"Could not decode image '{path}': {err}. The file is corrupt or not an image; "
            "re-download it, or remove it from the dataset's split (`vlpeft datasets check NAME --root DIR "
            "--verify-images` lists every such file)."
        ) from None
