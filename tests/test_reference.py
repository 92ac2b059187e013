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


# ---- APE (yangyangyang127/APE) ----------------------------------------------------------------------

APE_CONFIGS = reference("ape_configs")["configs"]


@pytest.mark.parametrize("dataset", sorted(APE_CONFIGS))
def test_ape_presets_are_the_official_configs(dataset):
    from vlpeft.methods.heads.ape import APE, APET

    official = APE_CONFIGS[dataset]
    ape = APE.config_class().with_overrides(APE.preset(dataset, 16))
    (sb, sa, sg), (nb, na, ng) = official["search_scale"], official["search_step"]
    assert ape.search_scale == (sb, sa, sg) and ape.search_step == (nb, na) and ape.gamma_steps == ng
    assert (ape.init_alpha, ape.init_beta, ape.init_gamma) == tuple(
        official[f"init_{k}"] for k in ("alpha", "beta", "gamma")
    )
    assert ape.feat_num == official["training_free_feat_num"] and ape.w == tuple(official["w_training_free"])
    apet = APET.config_class().with_overrides(APET.preset(dataset, 16))
    assert apet.feat_num == official["training_feat_num"] and apet.w == tuple(official["w_training"])
    assert (apet.lr, apet.eps, apet.epochs) == (official["lr"], official["eps"], official["train_epoch"])
    assert apet.search_step == (nb, na) and apet.init_alpha == official["init_alpha"]


@pytest.fixture(scope="module")
def ape_case():
    from vlpeft.methods.heads.ape import APE

    ref = reference("ape")
    i, cfg = ref["inputs"], ref["settings"]["cfg"]
    keys = torch.tensor(i["cache_keys_ND(class-major rows; official file stores the transpose (D,N))"])
    train = FeatureSet(keys[None], torch.tensor(i["cache_labels"]))
    val = FeatureSet(torch.tensor(i["val_features"])[None], torch.tensor(i["val_labels"]))
    text = FixedText(torch.tensor(i["clip_weights_CD(official (D,C) = transpose)"]))
    data = HeadData(train=train, val=val, text=text, num_classes=i["C"], seed=1, shots=i["K"])
    (sb, sa, sg), (nb, na, ng) = cfg["search_scale"], cfg["search_step"]
    settings = {
        "w": tuple(cfg["w_training_free"]), "feat_num": cfg["training_free_feat_num"],
        "init_alpha": cfg["init_alpha"], "init_beta": cfg["init_beta"], "init_gamma": cfg["init_gamma"],
        "search_scale": (sb, sa, sg), "search_step": (nb, na), "gamma_steps": ng,
    }  # fmt: skip
    head = APE(APE.config_class().with_overrides(settings))
    return ref["outputs"], head, data, torch.tensor(i["test_features"])


def test_ape_channels_and_logits_match_the_official_code(ape_case):
    out, head, data, test = ape_case
    head.prepare(data)
    assert head.channels.tolist() == out["selected_channels(topk order)"]
    with torch.no_grad():
        close(head.logits(test), out["test_ape_logits_init"], atol=1e-4, rtol=1e-5)


def test_ape_search_matches_the_official_code(ape_case):
    out, head, data, test = ape_case
    report = head.fit(data)
    close([report["beta"], report["alpha"], report["gamma"]], out["best(beta, alpha, gamma)"])
    assert report["val_accuracy"] == pytest.approx(out["best_val_acc"])
    with torch.no_grad():
        close(head.logits(test), out["test_ape_logits_best"], atol=1e-4, rtol=1e-5)
