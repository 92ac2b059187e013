"""The eval transform reproduces transformers' own image processors (without torchvision)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from vlpeft.data.transforms import ImageTransform
from vlpeft.errors import BackboneError

from conftest import real_looking_image

# transformers 5 makes CLIPImageProcessor the torchvision backend; its PIL backend is the
# reference here. Observed difference: exactly 0; the bound allows float reordering only.
MAX_ABS_DIFF = 1e-5
SHAPES = [
    (300, 400, "RGB"),
    (401, 299, "RGB"),
    (100, 50, "RGBA"),
    (224, 224, "L"),
    (517, 333, "RGB"),
    (31, 17, "P"),
]


@pytest.mark.parametrize(
    "processor", [CLIPImageProcessorPil(), SiglipImageProcessorPil()], ids=["clip", "siglip"]
)
@pytest.mark.parametrize("h,w,mode", SHAPES)
def test_matches_transformers_processor(processor, h, w, mode):
    transform = ImageTransform.from_processor_config(processor.to_dict())
    img = real_looking_image(h, w, seed=h * w, mode=mode)
    reference = processor(images=img, return_tensors="np")["pixel_values"][0]
    ours = transform(img).numpy()
    assert ours.shape == reference.shape == (3, 224, 224)
    assert np.abs(ours - reference).max() <= MAX_ABS_DIFF


def test_reads_old_style_integer_sizes():
    t = ImageTransform.from_processor_config({"size": 224, "crop_size": 224, "do_center_crop": True})
    assert t.shortest_edge == 224 and t.crop == (224, 224)
    assert ImageTransform.from_processor_config(t.to_processor_config()) == t


def test_shortest_edge_resize_and_center_crop_offsets():
    t = ImageTransform(shortest_edge=4, crop=(4, 4), mean=(0, 0, 0), std=(1, 1, 1), rescale_factor=1.0)
    img = real_looking_image(4, 9)
    out = t(img)
    assert out.shape == (3, 4, 4)  # width 9 -> crop columns 2..5 ((9 - 4) // 2 = 2)
    expected = np.asarray(img, dtype=np.float32)[:, 2:6].transpose(2, 0, 1)
    assert np.array_equal(out.numpy(), expected)


def test_bad_size_is_explained():
    with pytest.raises(BackboneError, match="cannot read 'crop_size'"):
        ImageTransform.from_processor_config({"do_center_crop": True, "crop_size": {"h": 3}})
