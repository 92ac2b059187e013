"""Reference numbers for APE (training-free) from the OFFICIAL code (yangyangyang127/APE).

Runs the official ``main.APE`` (main.py L28-103) and ``utils.cal_criterion`` (utils.py L22-72)
unmodified on CPU with tiny seeded inputs, capturing their locals with ``sys.settrace``.

Usage (a checkout of the official repository, never copied into vlpeft):

  python tools/reference/ape.py --official PATH --commit SHA [--out tests/data/reference/ape.json] \
      [--grid small|preset] [--preset Caltech101] [--dtype float32|float16]

The checked-in ``tests/data/reference/ape.json`` was made from commit
70460de74d1e967f8b4d270b3419373694758536 with the defaults (float32, the small grid).

--grid small : search_scale=[7, 7, 1], search_step=[10, 5, 4] (200 combos)
--grid preset: search_scale/search_step of --preset from the official configs (200*20*20 combos)

Stubs (recorded in the JSON): fake modules clip, cv2 (imported at top of utils.py, unused by
APE/cal_criterion); torchvision, torchvision.transforms, datasets, datasets.imagenet,
datasets.utils (imported at top of main.py, unused by APE); torch.Tensor.cuda -> identity.
cal_criterion caches ``sim`` in caches/<dataset>/criterion_<backbone>_<shots>shot.pt relative to
the CWD and RELOADS it if present: the script chdirs to a fresh temporary directory first.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import types

import torch
import torch.nn.functional as F


def tolist(x):
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).tolist() if x.is_floating_point() else x.tolist()
    return x


def make_inputs(C=4, K=3, D=32, n_val=24, n_test=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(C, D, generator=g)
    text = F.normalize(protos + 3.0 * torch.randn(C, D, generator=g), dim=-1)  # (C, D)
    labels = torch.arange(C).repeat_interleave(K)  # class-major, as the official reshape assumes
    raw_views = protos[labels][None] + 1.5 * torch.randn(10, C * K, D, generator=g)  # 10 augment views
    keys = F.normalize(raw_views.mean(0), dim=-1)  # extract_features.py L37-38
    val_labels = torch.randint(0, C, (n_val,), generator=g)
    val = F.normalize(protos[val_labels] + 3.0 * torch.randn(n_val, D, generator=g), dim=-1)
    test_labels = torch.randint(0, C, (n_test,), generator=g)
    test = F.normalize(protos[test_labels] + 3.0 * torch.randn(n_test, D, generator=g), dim=-1)
    return dict(
        C=C,
        K=K,
        D=D,
        cache_keys_ND=keys,
        cache_labels=labels,
        clip_weights_CD=text,
        val_features=val,
        val_labels=val_labels,
        test_features=test,
        test_labels=test_labels,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True)
    ap.add_argument("--out", default="tests/data/reference/ape.json")
    ap.add_argument("--commit", default="", help="the official commit (recorded in the output)")
    ap.add_argument("--grid", default="small", choices=["small", "preset"])
    ap.add_argument("--preset", default="Caltech101")
    ap.add_argument("--feat_num", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    official = os.path.abspath(args.official)
    stubs = []

    for name in [
        "clip",
        "cv2",
        "torchvision",
        "torchvision.transforms",
        "datasets",
        "datasets.imagenet",
        "datasets.utils",
    ]:
        m = types.ModuleType(name)
        sys.modules[name] = m
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["datasets"].build_dataset = None
    sys.modules["datasets.imagenet"].ImageNet = None
    sys.modules["datasets.utils"].build_data_loader = None
    stubs.append(
        "empty fake modules: clip, cv2 (utils.py top-level imports), torchvision, torchvision.transforms, "
        "datasets(.build_dataset=None), datasets.imagenet(.ImageNet=None), datasets.utils(.build_data_loader=None) "
        "(main.py top-level imports; none is used by APE/cal_criterion)"
    )
    torch.Tensor.cuda = lambda self, *a, **k: self
    stubs.append("torch.Tensor.cuda -> identity (CPU run)")
    sys.path.insert(0, official)
    import main as om  # official main.py (main() not run: guarded by __name__)
    import utils as ou  # official utils.py

    assert os.path.dirname(os.path.abspath(om.__file__)) == official

    def cls_acc(
        output, target, topk=1
    ):  # official utils.py L14-19 with [0] added (NumPy>=2 float(1-elem array))
        pred = output.topk(topk, 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        acc = float(correct[:topk].reshape(-1).float().sum(0, keepdim=True).cpu().numpy()[0])
        acc = 100 * acc / target.shape[0]
        return acc

    om.cls_acc = ou.cls_acc = cls_acc
    stubs.append(
        "cls_acc (utils.py L14-19) replaced in main/utils namespaces by an identical copy that indexes [0] "
        "before float(): NumPy>=2 raises on float() of a 1-element 1-D array; values unchanged"
    )

    import yaml  # the preset's w and init values, read from the official config file

    stem = {"Caltech101": "caltech101", "ImageNet": "imagenet", "OxfordPets": "oxford_pets"}.get(
        args.preset, args.preset.lower()
    )
    APE_OFFICIAL_PRESETS = {
        args.preset: yaml.safe_load(open(os.path.join(official, "configs", f"{stem}.yaml")))
    }

    inp = make_inputs()
    C, K, D = inp["C"], inp["K"], inp["D"]
    cache_keys = inp["cache_keys_ND"].t().contiguous().to(dtype)  # official keys file is (D, N)
    cache_values = F.one_hot(inp["cache_labels"]).to(dtype)  # official: .half()
    clip_weights = inp["clip_weights_CD"].t().contiguous().to(dtype)  # official (D, C)
    val_f, val_l = inp["val_features"].to(dtype), inp["val_labels"]
    test_f, test_l = inp["test_features"].to(dtype), inp["test_labels"]

    pre = APE_OFFICIAL_PRESETS[args.preset]
    cfg = {
        "dataset": "toy",
        "backbone": "RN50",
        "shots": K,
        "w_training_free": list(pre["w_training_free"]),
        "w_training": list(pre["w_training"]),
        "training_free_feat_num": args.feat_num,
        "training_feat_num": args.feat_num,
        "init_beta": pre["init_beta"],
        "init_alpha": pre["init_alpha"],
        "init_gamma": pre["init_gamma"],
    }
    if args.grid == "small":
        cfg.update(search_scale=[7, 7, 1], search_step=[10, 5, 4])
    else:
        cfg.update(search_scale=list(pre["search_scale"]), search_step=list(pre["search_step"]))

    import tempfile

    args.out = os.path.abspath(args.out)
    work = tempfile.mkdtemp(prefix="ape-reference-")
    os.makedirs(os.path.join(work, "caches", cfg["dataset"]), exist_ok=True)
    crit_file = os.path.join(work, "caches", cfg["dataset"], f"criterion_RN50_{K}shot.pt")
    if os.path.exists(crit_file):
        os.remove(crit_file)
    os.chdir(work)

    src = open(os.path.join(official, "main.py")).read().splitlines()
    L_BEFORE = next(
        i + 1 for i, l in enumerate(src) if "best_search_acc = 0" in l
    )  # after 'Before search' logits
    rec = {}

    def trace_ape(frame, event, arg):
        fl = frame.f_locals
        if event == "line" and frame.f_lineno == L_BEFORE and "before" not in rec:
            rec["before"] = dict(
                ape_logits=fl["ape_logits"].clone(),
                cache_logits=fl["cache_logits"].clone(),
                R_fW=fl["R_fW"].clone(),
                R_fF=fl["R_fF"].clone(),
                cache_div=fl["cache_div"].clone(),
                key_logits_softmax=fl["key_logits"].clone(),
                R_FW=fl["R_FW"].clone(),
                beta=fl["beta"],
                alpha=fl["alpha"],
                gamma=fl["gamma"],
                indices=fl["indices"].clone(),
            )
        elif event == "return" and "best_beta" in frame.f_locals and "gamma_list" in frame.f_locals:
            rec["after"] = dict(
                best_beta=fl["best_beta"],
                best_alpha=fl["best_alpha"],
                best_gamma=fl["best_gamma"],
                best_search_acc=fl["best_search_acc"],
                ape_logits_test=fl["ape_logits"].clone(),
                test_acc=fl["acc"],
                beta_list=fl["beta_list"],
                alpha_list=fl["alpha_list"],
                gamma_list=fl["gamma_list"],
            )
        return trace_ape

    def trace_crit(frame, event, arg):
        if event == "return" and "indices" in frame.f_locals:
            fl = frame.f_locals
            rec["criterion"] = dict(
                sim=fl["sim"].clone(),
                criterion=fl["criterion"].clone(),
                count=fl.get("count"),
                indices=fl["indices"].clone(),
            )
        return trace_crit

    def global_tracer(frame, event, arg):
        if frame.f_code is om.APE.__code__:
            return trace_ape
        if frame.f_code is ou.cal_criterion.__code__:
            return trace_crit
        return None

    log = io.StringIO()
    sys.settrace(global_tracer)
    try:
        with contextlib.redirect_stdout(log):
            om.APE(cfg, cache_keys.clone(), cache_values.clone(), val_f, val_l, test_f, test_l, clip_weights)
    finally:
        sys.settrace(None)

    # independent checks (not official code)
    feats = torch.cat([clip_weights.t().unsqueeze(1), cache_keys.t().reshape(C, K, D)], 1).double()
    s = feats.sum(1)
    n = K + 1
    sim_closed = (s.sum(0).pow(2) - s.pow(2).sum(0)) / (C * (C - 1) * n * n)
    commit = (
        args.commit
        or subprocess.run(
            ["git", "-C", official, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    b, a = rec["before"], rec["after"]
    out = {
        "repo": "yangyangyang127/APE",
        "commit": commit,
        "official_code_run": {
            "main.py": "APE() lines 28-103 in full, unmodified",
            "utils.py": "cal_criterion (22-72, branch only_use_txt=False, training_free=True), cls_acc (14-19)",
            "captured": f"locals before main.py line {L_BEFORE} ('Before search' logits with init beta/alpha/gamma) and at return",
        },
        "stubs": stubs,
        "settings": {
            "dtype": args.dtype,
            "grid": args.grid,
            "preset_for_w_and_init": args.preset,
            "cfg": cfg,
            "torch": torch.__version__,
        },
        "inputs": {
            "C": C,
            "K": K,
            "D": D,
            "cache_keys_ND(class-major rows; official file stores the transpose (D,N))": tolist(
                cache_keys.t()
            ),
            "cache_labels": tolist(inp["cache_labels"]),
            "clip_weights_CD(official (D,C) = transpose)": tolist(clip_weights.t()),
            "val_features": tolist(val_f),
            "val_labels": tolist(val_l),
            "test_features": tolist(test_f),
            "test_labels": tolist(test_l),
        },
        "outputs": {
            "sim(per channel)": tolist(rec["criterion"]["sim"]),
            "sim_count": rec["criterion"]["count"],
            "sim_closed_form_check_maxabs": float(
                (sim_closed - rec["criterion"]["sim"].double()).abs().max()
            ),
            "criterion": tolist(rec["criterion"]["criterion"]),
            "selected_channels(topk order)": tolist(rec["criterion"]["indices"]),
            "init(beta, alpha, gamma)": [b["beta"], b["alpha"], b["gamma"]],
            "cache_div(KL bits, per cache row)": tolist(b["cache_div"]),
            "key_logits_softmax": tolist(b["key_logits_softmax"]),
            "R_FW(exp(gamma*div))": tolist(b["R_FW"]),
            "test_R_fW(100 f.W)": tolist(b["R_fW"]),
            "test_R_fF(selected-channel affinity)": tolist(b["R_fF"]),
            "test_cache_logits_init": tolist(b["cache_logits"]),
            "test_ape_logits_init": tolist(b["ape_logits"]),
            "beta_list": a["beta_list"],
            "alpha_list": a["alpha_list"],
            "gamma_list": a["gamma_list"],
            "best(beta, alpha, gamma)": [a["best_beta"], a["best_alpha"], a["best_gamma"]],
            "best_val_acc": a["best_search_acc"],
            "test_ape_logits_best": tolist(a["ape_logits_test"]),
            "test_acc_best": a["test_acc"],
        },
        "official_stdout": log.getvalue().splitlines()[-40:],
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", args.out)
    print("channels", out["outputs"]["selected_channels(topk order)"])
    print(
        "best", out["outputs"]["best(beta, alpha, gamma)"], "val", a["best_search_acc"], "test", a["test_acc"]
    )
    print("sim closed-form maxabs", out["outputs"]["sim_closed_form_check_maxabs"])
    print("\n".join(out["official_stdout"][-6:]))


if __name__ == "__main__":
    main()
