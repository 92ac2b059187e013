"""ProGrad reference numbers from the official code (BeierZhu/Prompt-align) on a tiny CLIP.

Runs the official ``trainers/prograd.py`` ProGrad trainer class (build_model, forward_backward,
ProGradLoss, CustomCLIP/PromptLearner/TextEncoder, zero-shot ``CLIP``) and Dassl's
``TrainerBase.prograd_backward_and_update`` + ``build_optimizer`` + ``build_lr_scheduler``
on vlpeft's tiny CLIP converted to OpenAI's layout (see openai_clip.py).

    python tools/reference/prograd.py --official <Prompt-align checkout> --commit <sha> --out prograd.json
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import openai_clip as oc  # noqa: E402

CLASSNAMES = ["abyssinian", "beagle", "sphynx"]
PIXEL_SEED = 1234
N_IMAGES = 4
LABELS = [0, 1, 2, 1]
N_STEPS = 3


def make_cfg():
    """Stub of the yacs CfgNode fields the official code reads (plain namespaces)."""
    return NS(
        TRAINER=NS(COOP=NS(N_CTX=16, CTX_INIT=True, CSC=False, CLASS_TOKEN_POSITION="end", PREC="fp32")),
        DATASET=NS(NAME="OxfordPets"),
        LOSS=NS(NAME="prograd", T=1.0, LAMBDA=1.0),
        INPUT=NS(SIZE=(oc.TINY["image_size"], oc.TINY["image_size"])),
        MODEL=NS(BACKBONE=NS(NAME="ViT-B/16"), INIT_WEIGHTS=""),
        OPTIM=oc.dassl_sgd_optim(),  # the yaml's SGD recipe, Dassl's defaults
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="BeierZhu/Prompt-align checkout root")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", default=tempfile.mkdtemp(prefix="vlpeft-reference-"))
    args = ap.parse_args()
    torch.set_grad_enabled(True)

    root = Path(args.official).resolve()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    # tiny CLIP (vlpeft) -> OpenAI layout; transformers is imported here, before the import stubs
    hf_dir = oc.make_tiny(work / "tiny_clip")
    gz = oc.write_simple_bpe(hf_dir, work / "tiny_bpe.txt.gz")
    sd = oc.to_openai(hf_dir)

    # official modules: ProGrad.public (clip package, trainers) and Dassl.ProGrad.pytorch (engine, optim)
    import mockimports

    sys.path.insert(0, str(root / "Dassl.ProGrad.pytorch"))
    sys.path.insert(0, str(root / "ProGrad.public"))
    with mockimports.mocked(oc.MOCKED):
        clip_mod = importlib.import_module("clip.clip")
        model_mod = importlib.import_module("clip.model")
        st_mod = importlib.import_module("clip.simple_tokenizer")
        importlib.import_module("dassl.engine")
        trainer_mod = importlib.import_module("dassl.engine.trainer")
        pg = importlib.import_module("trainers.prograd")
    for m in (clip_mod, pg, trainer_mod):
        assert Path(m.__file__).resolve().is_relative_to(root), m.__file__

    # ---- stubs --------------------------------------------------------------------------------
    oc.use_tiny_tokenizer(clip_mod, st_mod, gz, pg)  # clip.tokenize and prograd's name_lens
    pg.load_clip_to_cpu = lambda cfg: oc.build_official(model_mod, sd)  # build_model(sd).float()
    pg.CLIP.cuda = lambda self, *a, **k: self  # build_model() calls self.zs_clip.cuda(); CPU here
    cfg = make_cfg()

    trainer = pg.ProGrad.__new__(pg.ProGrad)  # no __init__: it builds Dassl's data loaders
    trainer_mod.TrainerBase.__init__(trainer)
    trainer.cfg = cfg
    trainer.device = torch.device("cpu")
    trainer.dm = NS(dataset=NS(classnames=list(CLASSNAMES)))
    trainer.batch_idx, trainer.num_batches = 0, 10**9  # forward_backward never calls update_lr()
    trainer.check_cfg(cfg)
    trainer.build_model()  # official: zs CLIP, CustomCLIP, freezing, build_optimizer/scheduler, criterion
    trainer.set_model_mode("train")

    model, zs = trainer.model, trainer.zs_clip
    pl = model.prompt_learner
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_learner.ctx"], trainable
    optim = trainer._optims["prompt_learner"]

    # ---- inputs -------------------------------------------------------------------------------
    g = torch.Generator().manual_seed(PIXEL_SEED)
    size = oc.TINY["image_size"]
    pixels = torch.randn(N_IMAGES, 3, size, size, generator=g)
    labels = torch.tensor(LABELS)
    batch = {"img": pixels, "label": labels}

    # ---- step-0 record (before any update) ----------------------------------------------------
    ctx_init = pl.ctx.detach().clone()
    with torch.no_grad():
        img_feat = model.image_encoder(pixels)
        stu0 = model(pixels)
        tea0 = zs(pixels)
        teacher_text_features = zs.text_features.clone()
        prompts_embeds = pl()
        student_text_features = model.text_encoder(prompts_embeds, pl.tokenized_prompts)
    xe0, kl0 = trainer.criterion(model(pixels), tea0.detach(), labels)
    g_ce = torch.autograd.grad(xe0, pl.ctx, retain_graph=True)[0]
    g_kd = torch.autograd.grad(kl0, pl.ctx)[0]

    teacher_prompts = [pg.CUSTOM_TEMPLATES[cfg.DATASET.NAME].format(c.replace("_", " ")) for c in CLASSNAMES]
    teacher_ids = torch.cat([clip_mod.tokenize(p) for p in teacher_prompts])

    # capture the gradient the optimizer sees (after the official projection) at each step
    seen = {}

    def pre_step(opt, a, kw):
        seen["grad"] = pl.ctx.grad.detach().clone()
        seen["lr"] = opt.param_groups[0]["lr"]

    optim.register_step_pre_hook(pre_step)

    steps = []
    for step in range(N_STEPS):
        with torch.no_grad():
            stu = model(pixels)
            tea = zs(pixels)
            xe, kl = trainer.criterion(stu, tea, labels)
        # gradients of both losses at this point (for reporting the projection), not used by the update
        out = model(pixels)
        xe_, kl_ = trainer.criterion(out, tea, labels)
        a = torch.autograd.grad(xe_, pl.ctx, retain_graph=True)[0]
        b = torch.autograd.grad(kl_, pl.ctx)[0]
        cos = float(torch.dot((a / torch.linalg.norm(a)).flatten(), (b / torch.linalg.norm(b)).flatten()))
        summary = trainer.forward_backward(batch)  # official: forward, criterion, prograd_backward_and_update
        steps.append(
            {
                "step": step + 1,
                "xe_loss": float(xe),
                "kl_loss": float(kl),
                "summary": summary,
                "student_logits": oc.tolist(stu),
                "grad_ce": oc.tolist(a),
                "grad_kd": oc.tolist(b),
                "cos_ce_kd": cos,
                "projected": cos < 0,
                "grad_used": oc.tolist(seen["grad"]),
                "lr": seen["lr"],
                "ctx_after": oc.tolist(pl.ctx),
            }
        )

    name_lens = pl.name_lens
    res = {
        "method": "prograd",
        "official": {
            "repo": "BeierZhu/Prompt-align",
            "commit": args.commit,
            "files": [
                "ProGrad.public/trainers/prograd.py (ProGrad, CustomCLIP, PromptLearner, TextEncoder, CLIP, ProGradLoss, CUSTOM_TEMPLATES)",
                "Dassl.ProGrad.pytorch/dassl/engine/trainer.py (TrainerBase.prograd_backward_and_update)",
                "Dassl.ProGrad.pytorch/dassl/optim (build_optimizer, build_lr_scheduler)",
                "ProGrad.public/clip (model.py build_model, simple_tokenizer.py, clip.py tokenize)",
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
            "cfg": oc.ns_to_dict(cfg),
            "load_clip_to_cpu": "returns build_model(to_openai(tiny)).float() (a fresh model per call: the "
            "zero-shot CLIP and CustomCLIP get separate copies, as officially)",
            "trainers.prograd._tokenizer": "the same tiny-BPE SimpleTokenizer (used for name_lens)",
            "CLIP.cuda": "identity (build_model() moves the zero-shot CLIP with .cuda(); CPU here)",
            "trainer": "ProGrad.__new__ + TrainerBase.__init__ (no data manager); trainer.dm.dataset.classnames "
            "= class names; device cpu; batch_idx=0, num_batches=1e9 so forward_backward never steps the "
            "scheduler; set_model_mode('train')",
            "tensorboard, gdown": "MagicMock import stubs (Dassl imports them; unused)",
        },
        "settings": {
            "precision": "fp32 (PREC='fp32'), CPU, no autocast",
            "optimizer": "Dassl build_optimizer: torch.optim.SGD(lr=0.002, momentum=0.9, weight_decay=5e-4, "
            "dampening=0, nesterov=False) on prompt_learner.parameters() (= [ctx])",
            "scheduler": "Dassl build_lr_scheduler cosine T_max=50, no warmup (WARMUP_EPOCH=-1), never stepped: "
            "lr 0.002 in all steps. NB the official yaml warms up 1 epoch at constant lr 1e-5.",
            "steps": f"{N_STEPS} x trainer.forward_backward(batch) with the same batch",
            "projection": "prograd_backward_and_update: b=grad(KD), a=grad(CE); if cos(a,b)<0: "
            "grad = a - LAMBDA*(a.b_hat) b_hat else grad = a (CE only); then optim.step()",
        },
        "inputs": {
            "classnames": CLASSNAMES,
            "dataset_name": cfg.DATASET.NAME,
            "pixels_seed": PIXEL_SEED,
            "pixels_how": f"torch.randn({N_IMAGES}, 3, {size}, {size}, generator=torch.Generator().manual_seed({PIXEL_SEED})) "
            "(already-normalised model input)",
            "pixels": oc.tolist(pixels),
            "labels": LABELS,
        },
        "outputs": {
            "ctx_init": oc.tolist(ctx_init),
            "ctx_init_phrase": pg.CUSTOM_TEMPLATES[cfg.DATASET.NAME].replace(" {}.", "").replace("_", " "),
            "prompt_n_ctx_words": len(
                pg.CUSTOM_TEMPLATES[cfg.DATASET.NAME].replace(" {}.", "").replace("_", " ").split(" ")
            ),
            "tokenized_prompts": oc.tolist(pl.tokenized_prompts),
            "eot_positions": oc.tolist(pl.tokenized_prompts.argmax(-1)),
            "name_lens": name_lens,
            "student_prompt_embeddings": None,
            "student_text_features": oc.tolist(student_text_features),
            "image_features": oc.tolist(img_feat),
            "logit_scale": float(model.logit_scale.exp()),
            "student_logits": oc.tolist(stu0),
            "teacher_prompts": teacher_prompts,
            "teacher_token_ids": oc.tolist(teacher_ids),
            "teacher_text_features": oc.tolist(teacher_text_features),
            "teacher_logits": oc.tolist(tea0),
            "xe_loss": float(xe0),
            "kl_loss": float(kl0),
            "grad_ce": oc.tolist(g_ce),
            "grad_kd": oc.tolist(g_kd),
            "steps": steps,
            "ctx_final": oc.tolist(pl.ctx),
        },
    }
    del res["outputs"]["student_prompt_embeddings"]
    Path(args.out).write_text(json.dumps(res))
    print(
        json.dumps(
            {
                "xe0": float(xe0),
                "kl0": float(kl0),
                "steps": [(s["xe_loss"], s["kl_loss"], s["cos_ce_kd"], s["projected"]) for s in steps],
                "eot": res["outputs"]["eot_positions"],
                "ids0": res["outputs"]["tokenized_prompts"][0][:25],
            }
        )
    )


if __name__ == "__main__":
    main()
