"""CLIP-LoRA reference numbers from the official code (MaxZanella/CLIP-LoRA) on a tiny CLIP.

Official pieces used: ``loralib.utils.apply_lora`` / ``mark_only_lora_as_trainable`` /
``get_lora_parameters`` (+ ``loralib.layers`` PlainMultiheadAttentionLoRA, LinearLoRA), the
official ``clip`` package (build_model, tokenize), and the training step of ``lora.py run_lora``
(text features from template[0], image features, ``logit_scale * img @ txt.t()`` with
logit_scale = 100 from main.py, cross entropy, AdamW(wd 1e-2, betas 0.9/0.999, lr 2e-4)),
replicated line by line without autocast/GradScaler (fp32) and without the cosine scheduler.

    python tools/reference/clip_lora.py --official <CLIP-LoRA checkout> --commit <sha> --out clip_lora.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace as NS

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import openai_clip as oc  # noqa: E402

CLASSNAMES = ["abyssinian", "beagle", "sphynx"]
TEMPLATE = "a photo of a {}."
PIXEL_SEED = 4321
LORA_SEED = 0
N_IMAGES = 4
LABELS = [0, 1, 2, 1]
N_STEPS = 2
LOGIT_SCALE = 100  # main.py: logit_scale = 100
LR, WD, BETAS = 2e-4, 1e-2, (0.9, 0.999)


def lora_args(dropout_rate: float):
    # run_utils.py defaults except dropout_rate (0.25 there); backbone only selects the vision index table
    return NS(
        encoder="both",
        position="all",
        params=["q", "k", "v"],
        r=2,
        alpha=1,
        dropout_rate=dropout_rate,
        backbone="ViT-B/16",
    )


def vlpeft_name(official: str) -> str:
    """Official parameter name -> vlpeft (peft on HF CLIP) parameter name inside the Backbone."""
    parts = official.split(".")
    if parts[0] == "visual":
        tower, parts = "vision", parts[1:]
    else:
        tower = "text"
    # transformer.resblocks.{i}.attn.{q,k,v}_proj.w_lora_{A,B}
    assert parts[0] == "transformer" and parts[1] == "resblocks" and parts[3] == "attn", official
    i, proj, ab = parts[2], parts[4], parts[5][-1]
    return f"model.{tower}_model.encoder.layers.{i}.self_attn.{proj}.lora_{ab}.default.weight"


def run_variant(mods, sd, dropout_rate: float, zero_dropout_p: bool, pixels, labels):
    clip_mod, model_mod, lora_utils = mods
    clip_model = oc.build_official(model_mod, sd)
    clip_model.eval()  # main.py

    torch.manual_seed(LORA_SEED)
    list_lora_layers = lora_utils.apply_lora(lora_args(dropout_rate), clip_model)
    if zero_dropout_p:  # keep the dropout code path of LinearLoRA.forward but make it deterministic
        for layer in list_lora_layers:
            for proj in (layer.q_proj, layer.k_proj, layer.v_proj):
                proj.dropout.p = 0.0
    lora_utils.mark_only_lora_as_trainable(clip_model)
    named = [(n, p) for n, p in clip_model.named_parameters() if "lora_" in n]
    params = lora_utils.get_lora_parameters(clip_model)
    assert [id(p) for _, p in named] == [id(p) for p in params]
    trainable = [n for n, p in clip_model.named_parameters() if p.requires_grad]
    assert trainable == [n for n, _ in named], trainable
    optimizer = torch.optim.AdamW(params, weight_decay=WD, betas=BETAS, lr=LR)
    init = {n: oc.tolist(p) for n, p in named}

    texts = [TEMPLATE.format(c.replace("_", " ")) for c in CLASSNAMES]
    tokens = clip_mod.tokenize(texts)
    steps = []
    for step in range(N_STEPS):
        clip_model.train()
        # --- lora.py run_lora loop body (encoder == 'both'), fp32, no autocast / GradScaler ---
        class_embeddings = clip_model.encode_text(tokens)
        text_features = class_embeddings / class_embeddings.norm(dim=-1, keepdim=True)
        image_features = clip_model.encode_image(pixels)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        cosine_similarity = LOGIT_SCALE * image_features @ text_features.t()
        loss = F.cross_entropy(cosine_similarity, labels)
        optimizer.zero_grad()
        loss.backward()
        grads = {n: oc.tolist(p.grad) for n, p in named}
        optimizer.step()
        steps.append(
            {
                "step": step + 1,
                "text_features": oc.tolist(text_features),
                "image_features": oc.tolist(image_features),
                "logits": oc.tolist(cosine_similarity),
                "loss": float(loss),
                "grads": grads,
                "params_after": {n: oc.tolist(p) for n, p in named},
            }
        )
    return {
        "tokens": tokens,
        "init": init,
        "steps": steps,
        "names": [n for n, _ in named],
        "n_layers": len(list_lora_layers),
        "scaling": list_lora_layers[0].q_proj.scaling,
    }


def maxdiff(a, b) -> float:
    return float((torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)).abs().max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="MaxZanella/CLIP-LoRA checkout root")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", default=tempfile.mkdtemp(prefix="vlpeft-reference-"))
    args = ap.parse_args()

    root = Path(args.official).resolve()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    hf_dir = oc.make_tiny(work / "tiny_clip")
    gz = oc.write_simple_bpe(hf_dir, work / "tiny_bpe.txt.gz")
    sd = oc.to_openai(hf_dir)

    clip_mod, model_mod, st_mod = oc.import_official_clip(root)
    lora_utils = importlib.import_module("loralib.utils")
    assert Path(lora_utils.__file__).resolve().is_relative_to(root)
    oc.use_tiny_tokenizer(clip_mod, st_mod, gz)
    mods = (clip_mod, model_mod, lora_utils)

    g = torch.Generator().manual_seed(PIXEL_SEED)
    size = oc.TINY["image_size"]
    pixels = torch.randn(N_IMAGES, 3, size, size, generator=g)
    labels = torch.tensor(LABELS)

    main_run = run_variant(mods, sd, 0.0, False, pixels, labels)
    drop_run = run_variant(mods, sd, 0.25, True, pixels, labels)
    assert main_run["init"] == drop_run["init"]

    names = main_run["names"]
    res = {
        "method": "clip_lora",
        "official": {
            "repo": "MaxZanella/CLIP-LoRA",
            "commit": args.commit,
            "files": [
                "loralib/utils.py (apply_lora, mark_only_lora_as_trainable, get_lora_parameters)",
                "loralib/layers.py (PlainMultiheadAttentionLoRA, LinearLoRA, LoRALayer)",
                "lora.py run_lora (training step, replicated)",
                "main.py (logit_scale = 100)",
                "clip/ (build_model, tokenize, simple_tokenizer)",
            ],
        },
        "tiny_checkpoint": {
            "how": "vlpeft.backbones.init_tiny(dir, family='clip', seed=seed, size=TinySize(**size))",
            "seed": oc.TINY_SEED,
            "size": oc.TINY,
            "openai_state_dict_sha256": oc.sd_digest(sd),
        },
        "stubs": {
            **oc.STUBS,
            "args": vars(lora_args(0.0)),
            "no autocast / GradScaler": "run_lora wraps encode_text/encode_image in CUDA fp16 autocast "
            "and uses a GradScaler; here fp32 on CPU, plain loss.backward(); optimizer.step()",
            "no scheduler": "run_lora steps CosineAnnealingLR(optimizer, n_iters*shots, eta_min=1e-6) "
            "after every step; not built here: lr = 2e-4 in both steps",
        },
        "settings": {
            "precision": "fp32, CPU, no autocast",
            "lora": "r=2, alpha=1, scaling alpha/sqrt(r)={!r}, params q,k,v, encoder both, position all "
            "(INDEX_POSITIONS_*['all'] = blocks 0..11 -> both blocks of the 2-layer tiny towers)".format(
                main_run["scaling"]
            ),
            "dropout_rate": "0 in the main reference (deterministic). NB with dropout_rate == 0 LinearLoRA.forward "
            "takes its merge path (weight = W + s*B@A, forward, then weight.data -= s*B@A); the "
            "official default 0.25 takes the additive path (x W^T + b + s * dropout(x) A^T B^T). "
            "'dropout_path_reference' below: dropout_rate=0.25 then each LinearLoRA.dropout.p = 0, "
            "i.e. the additive path without dropout.",
            "lora_init": f"torch.manual_seed({LORA_SEED}) right before apply_lora; A kaiming_uniform(a=sqrt(5)), "
            "B zeros (the RNG is also consumed by nn.Linear inits inside PlainMultiheadAttentionLoRA/"
            "LinearLoRA, so load 'lora_init' instead of re-seeding peft)",
            "optimizer": f"torch.optim.AdamW(get_lora_parameters(model), lr={LR}, weight_decay={WD}, betas={BETAS}), "
            "eps default 1e-8, amsgrad False",
            "mode": "clip_model.eval() after build (main.py), clip_model.train() before each step (run_lora)",
            "logits": f"{LOGIT_SCALE} * normalize(image_features) @ normalize(text_features).t() "
            "(fixed 100, not the checkpoint's logit_scale)",
            "steps": f"{N_STEPS} steps on the same batch; each: encode_text(tokenize(texts)) and encode_image(pixels) "
            "with grad, CE, zero_grad, backward, AdamW step",
        },
        "inputs": {
            "classnames": CLASSNAMES,
            "template": TEMPLATE,
            "texts": [TEMPLATE.format(c) for c in CLASSNAMES],
            "token_ids": oc.tolist(main_run["tokens"]),
            "eot_positions": oc.tolist(main_run["tokens"].argmax(-1)),
            "pixels_seed": PIXEL_SEED,
            "pixels_how": f"torch.randn({N_IMAGES}, 3, {size}, {size}, generator=torch.Generator().manual_seed({PIXEL_SEED})) "
            "(already-normalised model input)",
            "pixels": oc.tolist(pixels),
            "labels": LABELS,
        },
        "name_map": {n: vlpeft_name(n) for n in names},
        "name_map_notes": "official A (r, in) and B (out, r) have peft's lora_A.weight / lora_B.weight shapes; "
        "no transpose. vlpeft names are relative to the Backbone (HFBackbone.model = CLIPModel); "
        "official text blocks = clip_model.transformer.resblocks, vision = clip_model.visual.transformer.resblocks.",
        "outputs": {
            "lora_init": main_run["init"],
            "steps": main_run["steps"],
        },
        "dropout_path_reference": {
            "steps": [
                {k: s[k] for k in ("step", "loss", "logits", "grads", "params_after")}
                for s in drop_run["steps"]
            ],
            "max_abs_diff_vs_main": {
                f"step{i + 1}": {
                    "loss": abs(a["loss"] - b["loss"]),
                    "logits": maxdiff(a["logits"], b["logits"]),
                    "grads": max(maxdiff(a["grads"][n], b["grads"][n]) for n in names),
                    "params_after": max(maxdiff(a["params_after"][n], b["params_after"][n]) for n in names),
                }
                for i, (a, b) in enumerate(zip(main_run["steps"], drop_run["steps"], strict=False))
            },
        },
    }
    Path(args.out).write_text(json.dumps(res))
    print(
        json.dumps(
            {
                "losses": [s["loss"] for s in main_run["steps"]],
                "n_lora_params": len(names),
                "diff_vs_dropout_path": res["dropout_path_reference"]["max_abs_diff_vs_main"],
                "first_names": list(res["name_map"].items())[:2],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
