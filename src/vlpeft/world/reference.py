"""Zero-shot accuracy of a backbone on small fixed subsets of every world dataset.

The embedded checkpoint ships ``zero_shot_reference.json`` made by this module; a test
regenerates the same images (the first ``per_class`` test images of each class) and checks
that the installed checkpoint reproduces it.

``python -m vlpeft.world.reference --model DIR`` writes ``DIR/zero_shot_reference.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

REFERENCE_FILE = "zero_shot_reference.json"


def subset_zero_shot(backbone, per_class: int = 3, world_seed: int = 0) -> dict[str, Any]:
    """Per world dataset: images, zero-shot accuracy (single template) and mean top logit."""
    from vlpeft.data import load_dataset
    from vlpeft.engine.evaluate import extract_image_features, zero_shot_logits
    from vlpeft.text import class_embeddings
    from vlpeft.world.datasets import WORLD_SETS, write_world_set

    out: dict[str, Any] = {"per_class": per_class, "world_seed": world_seed, "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for ws in WORLD_SETS:
            write_world_set(ws, Path(tmp) / ws.folder, world_seed, per_class=(0, 0, per_class))
            data = load_dataset(ws.name, tmp)
            feats, labels = extract_image_features(backbone, data.test)
            weights = class_embeddings(backbone, data.classnames, data.templates("single"))
            logits = zero_shot_logits(feats, weights, backbone)
            out["datasets"][ws.name] = {
                "images": len(labels),
                "accuracy": round(float((logits.argmax(1) == labels).float().mean()) * 100, 4),
                "mean_max_logit": round(float(logits.max(dim=1).values.mean()), 4),
            }
    return out


def main(argv: list[str] | None = None) -> None:
    from vlpeft.backbones import load_backbone

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="checkpoint directory (written into)")
    parser.add_argument("--per-class", type=int, default=3)
    args = parser.parse_args(argv)
    reference = subset_zero_shot(load_backbone(f"local:{args.model}", dtype="float32"), args.per_class)
    (Path(args.model) / REFERENCE_FILE).write_text(json.dumps(reference, indent=2) + "\n")
    print(json.dumps(reference, indent=2))


if __name__ == "__main__":
    main()
