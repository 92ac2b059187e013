"""Write the saved-run fixture: run directories as `vlpeft train` writes them, and their predictions.

``tests/test_saved_runs.py`` loads these directories with the current code and checks that they
predict what they predicted when they were written. The checked-in fixture was written by commit
825cfba (the flat ``vlpeft/methods`` layout, before the move to one package per family); rerun
this script only to add a fixture for a new on-disk format, never to paper over a changed number.

    python tools/make_saved_runs.py tests/data/saved_runs
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

# One method of each family (and the text-side and deep prompt learners), a few steps each.
RUNS = {
    "tip-adapter-f": {"epochs": "2"},
    "coop": {"epochs": "2", "n_ctx": "4"},
    "maple": {"epochs": "1", "depth_text": "2", "depth_vision": "2"},
    "lora": {"iters_per_shot": "1", "r": "2"},
}


def main(out: Path) -> None:
    from vlpeft.engine.runner import TrainConfig, predict, run_train
    from vlpeft.world.datasets import WorldSet, shapes_scene, write_world_set

    out.mkdir(parents=True, exist_ok=True)
    ws = WorldSet(
        "WorldShapes", "world_shapes", "a photo of a {}.", ("circle", "square", "star"), shapes_scene
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_world_set(ws, Path(tmp) / ws.folder, 0, per_class=(3, 1, 2))
        images = sorted((Path(tmp) / ws.folder / "images").rglob("*.png"))[:3]
        for i, image in enumerate(images):
            shutil.copy(image, out / f"image{i}.png")
        for method, overrides in RUNS.items():
            cfg = TrainConfig(
                method,
                "embedded",
                "WorldShapes",
                tmp,
                shots=3,
                seed=1,
                overrides=overrides,
                cache_dir=str(Path(tmp) / "cache"),
            )
            run_dir = out / method.replace("+", "p")
            result = run_train(cfg, run_dir, overwrite=True)
            preds = predict(run_dir, [out / f"image{i}.png" for i in range(len(images))], top_k=3)
            for p in preds:
                p["image"] = Path(p["image"]).name
            (run_dir / "expected_predictions.json").write_text(
                json.dumps({"accuracy": result["metrics"]["accuracy"], "predictions": preds}, indent=1)
            )
            print(method, result["metrics"]["accuracy"])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
