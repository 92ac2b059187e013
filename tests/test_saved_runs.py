"""Run directories written by an earlier vlpeft still load and predict the same.

The fixture under ``tests/data/saved_runs`` was written by ``tools/make_saved_runs.py`` at commit
825cfba, before the methods moved into one package per family: one feature head (Tip-Adapter-F), a
text-side prompt learner (CoOp), a deep prompt learner (MaPLe) and a module adapter (LoRA), each
trained for a few steps on a 3-class WorldShapes with the embedded model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SAVED = Path(__file__).parent / "data" / "saved_runs"
RUNS = sorted(p.name for p in SAVED.iterdir() if p.is_dir())


def test_fixture_holds_one_run_of_each_family():
    families = {json.loads((SAVED / r / "adapter_config.json").read_text())["family"] for r in RUNS}
    assert families == {"feature-head", "prompt", "module-adapter"}


@pytest.mark.parametrize("run", RUNS)
def test_saved_run_predicts_what_it_predicted(run):
    from vlpeft.engine.runner import predict

    expected = json.loads((SAVED / run / "expected_predictions.json").read_text())["predictions"]
    images = [SAVED / p["image"] for p in expected]
    got = predict(SAVED / run, images, top_k=3)
    for want, have in zip(expected, got, strict=True):
        assert [t["class"] for t in have["top"]] == [t["class"] for t in want["top"]]
        for t_have, t_want in zip(have["top"], want["top"], strict=True):
            assert t_have["probability"] == pytest.approx(t_want["probability"], abs=1e-5)
