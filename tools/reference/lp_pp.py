"""Reference numbers for LP++ from the OFFICIAL code (FereshteShakeri/FewShot-CLIP-Strong-Baseline).

Runs the official ``LinearProbe_P2.forward`` (methods/linear_probe_p2.py) end to end on CPU with
tiny seeded inputs, capturing its locals with ``sys.settrace`` (no official line is edited), and
also calls the official helper functions directly.

Usage (a checkout of the official repository, never copied into vlpeft; e.g. ``git archive`` of
the repository at the commit below, or a clone):

  python tools/reference/lp_pp.py --official PATH --commit SHA [--out tests/data/reference/lp_pp.json]

The checked-in ``tests/data/reference/lp_pp.json`` was made from commit
f81054f995b060f8348d20e7306e15889b70c786 with the defaults (float32, 20 iterations, seed 1);
``tests/test_reference.py`` compares vlpeft's LP++ with it.

Stubs / patches (all recorded in the JSON under "stubs"):
  * package ``methods``: a bare module whose __path__ is <official>/methods, so that
    ``methods/__init__.py`` (which imports tip_adapter/coop/... -> clip) is NOT executed;
    methods.method, methods.utils and methods.linear_probe_p2 are then imported normally.
  * torch.Tensor.cuda and torch.nn.Module.cuda -> identity (run on CPU).
  * model: object with ``dtype`` (float32 here; float16 in the official GPU run since
    clip.load on cuda keeps fp16) and ``encode_image(x) = x.clone()`` (loaders yield features).
  * train/val loaders: one batch list [(features, labels)] (batch_size 256 >= N in the official
    config, so one batch; train features already "augmented" = given).
  * float32 only: methods.utils.get_one_hot is wrapped as ``orig(y, n).to(z dtype)`` because the
    official one-hot is float16 and ``one_hot.bmm(fp32)`` in compute_centroids would raise a dtype
    error (in the official GPU run features are fp16 so this never arises). 0/1 values are exact in
    fp16, so the wrapper changes no value.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
        return x.detach().to(torch.float64).cpu().tolist() if x.is_floating_point() else x.cpu().tolist()
    return x


def make_inputs(C=4, K=3, D=16, n_val_per_class=3, n_test=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(C, D, generator=g)
    text = F.normalize(protos + 0.8 * torch.randn(C, D, generator=g), dim=-1)  # (C, D)
    labels = torch.arange(C).repeat_interleave(K)  # sorted, balanced
    feats = F.normalize(protos[labels] + 1.5 * torch.randn(C * K, D, generator=g), dim=-1)
    val_labels = torch.arange(C).repeat_interleave(n_val_per_class)
    val_feats = F.normalize(protos[val_labels] + 1.5 * torch.randn(len(val_labels), D, generator=g), dim=-1)
    test_labels = torch.randint(0, C, (n_test,), generator=g)
    test_feats = F.normalize(protos[test_labels] + 1.5 * torch.randn(n_test, D, generator=g), dim=-1)
    return dict(
        C=C,
        K=K,
        D=D,
        features=feats,
        labels=labels,
        text_weights_CD=text,
        val_features=val_feats,
        val_labels=val_labels,
        test_features=test_feats,
        test_labels=test_labels,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True)
    ap.add_argument("--out", default="tests/data/reference/lp_pp.json")
    ap.add_argument("--commit", default="", help="the official commit (recorded in the output)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument(
        "--bias_seed",
        type=int,
        default=1,
        help="torch.manual_seed right before forward (nn.Linear bias init)",
    )
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    official = os.path.abspath(args.official)
    stubs = []

    # --- import official modules without running methods/__init__.py -------------------------
    pkg = types.ModuleType("methods")
    pkg.__path__ = [os.path.join(official, "methods")]
    sys.modules["methods"] = pkg
    stubs.append(
        "sys.modules['methods'] = bare package with __path__=[<official>/methods] (methods/__init__.py not executed: it imports clip via tip_adapter/coop)"
    )
    import methods.linear_probe_p2 as lpp  # official methods/linear_probe_p2.py
    import methods.utils as mu  # official methods/utils.py

    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    stubs.append("torch.Tensor.cuda / torch.nn.Module.cuda -> identity (CPU run)")
    if dtype == torch.float32:
        orig_one_hot = mu.get_one_hot

        def get_one_hot_fp32(y_s, num_classes):
            return orig_one_hot(y_s, num_classes).to(torch.float32)

        mu.get_one_hot = get_one_hot_fp32  # compute_centroids* look it up in mu's globals
        stubs.append(
            "methods.utils.get_one_hot wrapped: official result .to(float32) (official one-hot is fp16; fp16.bmm(fp32) would raise). Values unchanged (0/1)."
        )

    class FakeCLIP:
        def __init__(self, dt):
            self.dtype = dt

        def encode_image(self, x):
            return x.clone()

    stubs.append(
        f"model = FakeCLIP(dtype={args.dtype}); encode_image(x) = x.clone() (official run: CLIP fp16 on cuda)"
    )
    stubs.append("train_loader/val_loader = [(features, labels)] (one batch; official batch_size 256)")

    inp = make_inputs()
    C, K, D = inp["C"], inp["K"], inp["D"]
    feats = inp["features"].to(dtype)
    labels = inp["labels"]
    text_DC = inp["text_weights_CD"].t().contiguous().to(dtype)  # official clip_weights are (D, C)
    val_feats, val_labels = inp["val_features"].to(dtype), inp["val_labels"]
    test_feats, test_labels = inp["test_features"].to(dtype), inp["test_labels"]

    # --- direct calls of official helpers --------------------------------------------------------
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        helpers = {
            "calculate_lr_w(features)": float(lpp.calculate_lr_w(feats)),
            "calculate_lr_alpha(features, clip_weights)": float(lpp.calculate_lr_alpha(feats, text_DC)),
            "calculate_init_alpha(features, labels, shots, clip_weights)": float(
                lpp.calculate_init_alpha(feats, labels, K, text_DC)
            ),
            "compute_centroids_alpha((features@clip_weights)[None], labels[None])[0]": tolist(
                mu.compute_centroids_alpha((feats @ text_DC).unsqueeze(0), labels.unsqueeze(0))[0]
            ),
            "compute_centroids(features[None], labels[None])[0]": tolist(
                mu.compute_centroids(feats.unsqueeze(0), labels.unsqueeze(0))[0]
            ),
        }
    # cross-checks of our reading of alpha init
    S = feats.double() @ text_DC.double()  # (N, C)
    diag_mean = torch.stack([S[labels == c, c].mean() for c in range(C)]).mean()
    full_mean = torch.stack([S[labels == c].mean(0) for c in range(C)]).mean()
    checks = {
        "250*mean_c mean_{i in c} f_i.t_c (diagonal only)": float(250 * diag_mean),
        "250*mean_{c,k} mean_{i in c} f_i.t_k (all entries, vlpeft reading)": float(250 * full_mean),
    }

    # --- run the official forward with a tracer ----------------------------------------------
    method = lpp.LinearProbe_P2(
        {"train_epoch": args.epochs, "shots": K, "dataset": "toy", "output_dir": "/tmp/ref/lp_pp/out"}
    )
    src = open(os.path.join(official, "methods", "linear_probe_p2.py")).read().splitlines()

    def lineno(txt):
        hits = [i + 1 for i, l in enumerate(src) if txt in l]
        assert len(hits) >= 1, txt
        return hits[0]

    L_INIT = lineno("best_acc, best_epoch = 0.0, 0")
    L_EVAL = lineno("classifier.eval()")
    L_BEST = lineno("if acc_val >= best_acc:")
    code = lpp.LinearProbe_P2.forward.__code__
    rec = {"epochs": []}

    def snap_cls(cl):
        return {"W": cl.weight.detach().clone(), "b": cl.bias.detach().clone()}

    def local_tracer(frame, event, arg):
        fl = frame.f_locals
        if event == "line" and frame.f_lineno == L_INIT:
            rec["init"] = dict(
                snap_cls(fl["classifier"]),
                alpha=fl["alpha_vec"].detach().clone(),
                lr_temp=float(fl["lr_temp"]),
                lr_alpha=float(fl["self"].lr_alpha),
                final_init_alpha_mean=float(fl["final_init_alpha_mean"]),
                classifier=copy.deepcopy(fl["classifier"]),
            )
        elif event == "line" and frame.f_lineno == L_EVAL:
            av = fl["alpha_vec"]
            rec["epochs"].append(
                dict(
                    epoch=fl["epoch"],
                    loss=float(fl["loss"].detach()),
                    train_acc=float(fl["acc"]),
                    alpha=av.detach().clone(),
                    alpha_grad_accumulated=av.grad.detach().clone(),
                    **snap_cls(fl["classifier"]),
                )
            )
        elif event == "line" and frame.f_lineno == L_BEST:
            rec["epochs"][-1]["val_acc"] = float(fl["acc_val"])
            rec["epochs"][-1]["logits_val"] = fl["logits_val"].detach().clone()
        elif event == "return":
            rec["return"] = dict(
                best_epoch=fl["best_epoch"],
                best_acc=float(fl["best_acc"]),
                logits_test=fl["logits_test"].detach().clone(),
                acc_test=float(fl["acc_test"]),
                returned=arg,
                last=dict(alpha=fl["alpha_vec"].detach().clone(), **snap_cls(fl["classifier"])),
            )
        return local_tracer

    def global_tracer(frame, event, arg):
        if frame.f_code is code:
            return local_tracer
        return None

    torch.manual_seed(args.bias_seed)
    rng_probe = copy.deepcopy(torch.get_rng_state())
    log = io.StringIO()
    sys.settrace(global_tracer)
    try:
        with contextlib.redirect_stdout(log):
            ret = method(
                train_loader=[(feats.clone(), labels.clone())],
                val_loader=[(val_feats.clone(), val_labels.clone())],
                test_features=test_feats,
                test_labels=test_labels,
                text_weights=text_DC,
                model=FakeCLIP(dtype),
                classnames=None,
            )
    finally:
        sys.settrace(None)

    # bias init check: torch.manual_seed(bias_seed); nn.Linear(D, C) gives the same bias
    torch.set_rng_state(rng_probe)
    lin = torch.nn.Linear(D, C)
    bias_matches = bool(torch.equal(lin.bias.detach().to(dtype), rec["init"]["b"]))

    # logits/loss at init (same expression as official lines 151-153 / 127-130, on the init snapshot)
    cl0, a0 = rec["init"]["classifier"], rec["init"]["alpha"]
    with torch.no_grad():
        logits_test_init = cl0(test_feats) + torch.ones(test_feats.shape[0], 1).to(dtype) @ a0 * (
            test_feats @ text_DC
        )
        logits_train_init = cl0(feats) + torch.ones(feats.shape[0], 1).to(dtype) @ a0 * (feats @ text_DC)
        loss_init = float(F.cross_entropy(logits_train_init, labels))
    alpha_updates = [e["epoch"] for e in rec["epochs"] if (e["epoch"] + 1) % 10 == 0]

    commit = (
        args.commit
        or subprocess.run(
            ["git", "-C", official, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    out = {
        "repo": "FereshteShakeri/FewShot-CLIP-Strong-Baseline",
        "commit": commit,
        "official_code_run": {
            "methods/linear_probe_p2.py": "LinearProbe_P2.__init__ (46-51) and forward (53-167) in full, unmodified; "
            "calculate_lr_w (32-39), calculate_init_alpha (24-30), calculate_lr_alpha (16-22)",
            "methods/utils.py": "compute_centroids (111-124), compute_centroids_alpha (96-108), get_one_hot (82-94)",
            "captured_at_lines": {
                "init_snapshot(before)": L_INIT,
                "per_epoch(before classifier.eval)": L_EVAL,
                "val_acc(before best test)": L_BEST,
            },
            "computed_outside_official": "logits_test_init / loss_init: official expressions of lines 127-130 and "
            "151-153 evaluated on the init snapshot (deepcopy of classifier + alpha_vec)",
        },
        "stubs": stubs,
        "settings": {
            "dtype": args.dtype,
            "epochs(train_epoch)": args.epochs,
            "shots": K,
            "torch.manual_seed before forward (bias init)": args.bias_seed,
            "torch": torch.__version__,
        },
        "inputs": {
            "C": C,
            "K": K,
            "D": D,
            "features": tolist(feats),
            "labels": tolist(labels),
            "text_weights_CD": tolist(text_DC.t()),
            "note_text": "official clip_weights is (D, C) = text_weights_CD.T",
            "val_features": tolist(val_feats),
            "val_labels": tolist(val_labels),
            "test_features": tolist(test_feats),
            "test_labels": tolist(test_labels),
        },
        "helpers": helpers,
        "alpha_init_readings": checks,
        "outputs": {
            "alpha_init_scalar(final_init_alpha_mean)": rec["init"]["final_init_alpha_mean"],
            "alpha_init_vec": tolist(rec["init"]["alpha"]),
            "W_init": tolist(rec["init"]["W"]),
            "b_init": tolist(rec["init"]["b"]),
            "b_init_equals_fresh_nn.Linear(D,C)_after_same_seed": bias_matches,
            "lr_w(lr_temp)": rec["init"]["lr_temp"],
            "lr_alpha": rec["init"]["lr_alpha"],
            "logits_test_init": tolist(logits_test_init),
            "loss_init": loss_init,
            "alpha_update_epochs": alpha_updates,
            "per_epoch": [{k: tolist(v) for k, v in e.items()} for e in rec["epochs"]],
            "after_N_iterations": {k: tolist(v) for k, v in rec["return"]["last"].items()},
            "best_epoch": rec["return"]["best_epoch"],
            "best_val_acc": rec["return"]["best_acc"],
            "final_test_logits(at best epoch)": tolist(rec["return"]["logits_test"]),
            "final_test_acc": rec["return"]["acc_test"],
            "forward_returned(loss.item(), acc_test)": list(ret),
        },
        "official_stdout": log.getvalue().splitlines()[-60:],
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", args.out)
    print("alpha0", out["outputs"]["alpha_init_scalar(final_init_alpha_mean)"], checks)
    print(
        "lr_w",
        out["outputs"]["lr_w(lr_temp)"],
        "lr_alpha",
        out["outputs"]["lr_alpha"],
        "loss_init",
        loss_init,
    )
    print(
        "best_epoch",
        out["outputs"]["best_epoch"],
        "test_acc",
        out["outputs"]["final_test_acc"],
        "bias_match",
        bias_matches,
    )
    print("alpha after", out["outputs"]["after_N_iterations"]["alpha"])


if __name__ == "__main__":
    main()
