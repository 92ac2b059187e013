"""``vlpeft export``: a trained run as a standard transformers checkpoint plus its class head.

The output directory loads with plain ``transformers`` (no vlpeft, no peft)::

    model = CLIPModel.from_pretrained(DIR)            # or AutoModel / SiglipModel
    head = safetensors.torch.load_file(f"{DIR}/class_head.safetensors")
    feats = model.get_image_features(pixel_values=pixels).pooler_output   # transformers >= 5
    logits = F.normalize(feats, dim=-1) @ head["weight"].T + head["bias"]

``class_head.json`` lists the class names in the order of the logits. Adapters are merged into
the weights where the method allows (``--merge``: LoRA, DoRA, SSF); methods that change the
weights themselves (BitFit, LN-tuning, full fine-tuning, WiSE-FT, FLYP) need no merge; text-side
prompt learners (CoOp, KgCoOp, ProGrad) and zero-shot keep the backbone and ship their class
embeddings. Methods whose predictions are not a linear head over the image features (CoCoOp,
PLOT, visual prompts, AdaptFormer, cache models) are refused with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vlpeft.io import atomic_directory

HEAD_WEIGHTS = "class_head.safetensors"
HEAD_CONFIG = "class_head.json"


def export_run(
    run_dir: str | Path, out: str | Path, merge: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Write ``out`` (atomically) from the run in ``run_dir``; returns what was written."""
    from vlpeft.engine.runner import load_run

    backbone, method, classnames = load_run(run_dir)
    model, weight, bias = method.export_parts(merge)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        backbone.tokenizer.save_pretrained(tmp)
        processor = {
            "image_processor_type": _processor_type(backbone),
            **backbone.preprocess.to_processor_config(),
        }
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
        save_file(
            {"weight": weight.contiguous(), "bias": bias.contiguous()},
            str(tmp / HEAD_WEIGHTS),
            metadata={"method": method.name},
        )
        info = {
            "classnames": classnames,
            "method": method.name,
            "run": str(Path(run_dir).resolve()),
            "merged": bool(merge),
            "logits": "normalize(model.get_image_features(pixel_values).pooler_output) @ weight.T + bias",
        }
        (tmp / HEAD_CONFIG).write_text(json.dumps(info, indent=2) + "\n")
    return {"out": str(out), "classes": len(classnames), **{k: info[k] for k in ("method", "merged")}}


def _processor_type(backbone) -> str:
    return "SiglipImageProcessor" if backbone.family == "siglip" else "CLIPImageProcessor"


@torch.no_grad()
def exported_logits(directory: str | Path, pixels: torch.Tensor) -> torch.Tensor:
    """Logits of an exported directory with transformers alone (the recipe in this module's docstring)."""
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(directory)).eval()
    head = load_file(str(Path(directory) / HEAD_WEIGHTS))
    feats = model.get_image_features(pixel_values=pixels).pooler_output
    return F.normalize(feats, dim=-1) @ head["weight"].T + head["bias"]
