"""Reference tests: vlpeft's numbers against numbers produced by running each method's official
implementation on tiny inputs (generators in ``tools/reference/``; the JSON files record the official
commit, every stub, the inputs and the outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlpeft.features import FeatureSet
from vlpeft.methods.inputs import HeadData

REFERENCE = Path(__file__).parent / "data" / "reference"


def reference(name: str) -> dict:
    return json.loads((REFERENCE / f"{name}.json").read_text())


class FixedText:
    """A ClassText whose class weights are given (the official code's text weights)."""

    def __init__(self, weights: torch.Tensor):
        self._weights = weights
        self.classnames = [f"class {c}" for c in range(len(weights))]

    def weights(self, kind: str = "default", *args, **kwargs) -> torch.Tensor:
        return self._weights.clone()


def close(actual, expected, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.tensor(expected).double(), atol=atol, rtol=rtol
    )


# ---- LP++ (FereshteShakeri/FewShot-CLIP-Strong-Baseline) ----------------------------------------------


@pytest.fixture(scope="module")
def lpp_case():
    ref = reference("lp_pp")
    i = ref["inputs"]
    train = FeatureSet(torch.tensor(i["features"])[None], torch.tensor(i["labels"]))
    val = FeatureSet(torch.tensor(i["val_features"])[None], torch.tensor(i["val_labels"]))
    text = FixedText(torch.tensor(i["text_weights_CD"]))
    data = HeadData(train=train, val=val, text=text, num_classes=i["C"], seed=1, shots=i["K"])
    return ref, data, torch.tensor(i["test_features"])


def lpp_head(ref):
    from vlpeft.methods.heads.lp_pp import LPPP, LPPPConfig

    return LPPP(LPPPConfig(iterations=ref["settings"]["epochs(train_epoch)"]))


def test_lpp_init_matches_the_official_code(lpp_case):
    ref, data, test = lpp_case
    out, head = ref["outputs"], lpp_head(ref)
    torch.manual_seed(ref["settings"]["torch.manual_seed before forward (bias init)"])  # nn.Linear's bias
    head.prepare(data)
    close(head.alpha, out["alpha_init_vec"][0])
    close(head.linear.weight, out["W_init"])
    close(head.linear.bias, out["b_init"])
    lr_w, lr_alpha = head.step_sizes(F.normalize(data.train.view(0), dim=-1))
    assert lr_w == pytest.approx(out["lr_w(lr_temp)"], rel=1e-5)
    assert lr_alpha == pytest.approx(out["lr_alpha"], rel=1e-5)
    with torch.no_grad():
        close(head.logits(test), out["logits_test_init"])
        assert head.loss(data.train.view(0), data.train.labels).item() == pytest.approx(
            out["loss_init"], rel=1e-5
        )


def test_lpp_training_matches_the_official_code(lpp_case):
    ref, data, test = lpp_case
    out, head = ref["outputs"], lpp_head(ref)
    torch.manual_seed(ref["settings"]["torch.manual_seed before forward (bias init)"])
    report = head.fit(data)
    assert report["selected_iteration"] == out["best_epoch"]
    assert report["val_accuracy"] == pytest.approx(out["best_val_acc"])
    with torch.no_grad():
        close(head.logits(test), out["final_test_logits(at best epoch)"], atol=1e-4, rtol=1e-4)
    # the whole run, not only the selected iteration: rerun without validation to the last iteration
    torch.manual_seed(ref["settings"]["torch.manual_seed before forward (bias init)"])
    last = lpp_head(ref)
    last.fit(HeadData(data.train, None, data.text, data.num_classes, seed=1, shots=data.shots))
    final = out["after_N_iterations"]
    close(last.alpha, final["alpha"][0], atol=1e-4, rtol=1e-4)
    close(last.linear.weight, final["W"], atol=1e-4, rtol=1e-4)
    close(last.linear.bias, final["b"], atol=1e-4, rtol=1e-4)
