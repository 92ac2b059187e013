"""PLOT++ reference numbers from the official code (CHENGY12/PLOT ``plot-pp``) on a tiny CLIP.

Runs the official ``plot-pp/trainers/plotpp.py`` (MultiModalPromptLearner, CustomCLIP with its
Sinkhorn and forward, TextEncoder, PLOTPP.forward_backward) and plot-pp's own ``clip`` package
(``model.py`` build_model, whose VisionTransformer.forward takes the vision prompts; tokenize) with
Dassl's (KaiyangZhou/Dassl.pytorch) ``TrainerBase.model_backward_and_update``, ``build_optimizer``
and ``build_lr_scheduler`` on vlpeft's tiny CLIP converted to OpenAI's layout (see openai_clip.py).

The tiny here is wider than openai_clip.TINY: MultiModalPromptLearner hard-codes the vision prompt
width (``torch.empty(M, n_ctx_vision, 768)``), so the reference uses a width-768 tiny (12 heads of
64, mlp 3072, as build_model infers) instead of stubbing that constant.

    python tools/reference/plotpp.py --official <CHENGY12/PLOT checkout> --commit <sha> \
        --dassl <KaiyangZhou/Dassl.pytorch checkout> --dassl-commit <sha> --out plotpp.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import openai_clip as oc  # noqa: E402

# width 768: the official prompt learner's hard-coded vision prompt width; heads = width // 64 and
# mlp = 4 * width as OpenAI's build_model / ResidualAttentionBlock require.
SIZE = dict(
    width=768, layers=2, heads=12, mlp=3072, embed_dim=16, image_size=32, patch_size=8, context_length=77
)
TINY_SEED = 0
CLASSNAMES = ["accordion", "airplane", "anchor"]
DATASET = "Caltech101"
PIXEL_SEED = 2468
PROMPT_SEED = 0  # torch.manual_seed right before CustomCLIP (its first act: MultiModalPromptLearner)
N_IMAGES = 4
LABELS = [0, 1, 2, 1]
N_STEPS = 2
# Dassl.pytorch's data pipeline imports these (not installed; never used here) on top of oc.MOCKED
MOCKED = [*oc.MOCKED, "tabulate", "wilds"]


class NS(SimpleNamespace):
    """yacs-CfgNode stand-in: attribute access, plus cfg['KEY'] (CustomCLIP reads cfg['DEVICE'])."""

    def __getitem__(self, key):
        return getattr(self, key)


def make_cfg():
    """Stub of the yacs CfgNode fields the official code reads (plain namespaces)."""
    return NS(
        DEVICE="cpu",  # train.py: cfg.DEVICE = args.device; CustomCLIP: torch.device(cfg['DEVICE'])
        TRAINER=NS(
            PLOTPP=NS(
                N_CTX=4,
                N_CTX_V=2,
                CTX_INIT=True,
                CSC=False,
                CLASS_TOKEN_POSITION="end",
                PREC="fp32",
                M=2,
                N=4,
                TRADE_OFF=False,
                MODEL_UPD="joint",
                PRETRAIN_DIR="",
            )
        ),
        DATASET=NS(NAME=DATASET),
        INPUT=NS(SIZE=(SIZE["image_size"], SIZE["image_size"])),
        MODEL=NS(BACKBONE=NS(NAME="ViT-B/16"), INIT_WEIGHTS=""),
        OPTIM=oc.dassl_sgd_optim(),  # the yaml's SGD recipe, Dassl's defaults
    )


class TorchSpy:
    """Stands in for ``torch`` inside trainers/plotpp.py only: every attribute is torch's own; it
    records the outputs of ``einsum`` (the similarity) and counts ``matmul`` calls (Sinkhorn
    iterations). Nothing is computed differently."""

    def __init__(self):
        self.einsum_out = []
        self.matmuls = 0

    def __getattr__(self, name):
        return getattr(torch, name)

    def einsum(self, *a, **k):
        out = torch.einsum(*a, **k)
        self.einsum_out.append(out.detach().clone())
        return out

    def matmul(self, *a, **k):
        self.matmuls += 1
        return torch.matmul(*a, **k)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="CHENGY12/PLOT checkout root (holds plot-pp/)")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--dassl", required=True, help="KaiyangZhou/Dassl.pytorch checkout root (holds dassl/)")
    ap.add_argument("--dassl-commit", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", default=tempfile.mkdtemp(prefix="vlpeft-reference-"))
    args = ap.parse_args()
    torch.set_grad_enabled(True)

    root = Path(args.official).resolve()
    dassl_root = Path(args.dassl).resolve()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    # tiny CLIP (vlpeft, width 768) -> OpenAI layout; transformers is imported before the import stubs
    from vlpeft.backbones.tiny import TinySize, init_tiny

    hf_dir = init_tiny(
        work / "tiny_clip", family="clip", seed=TINY_SEED, size=TinySize(**SIZE), overwrite=True
    )
    gz = oc.write_simple_bpe(hf_dir, work / "tiny_bpe.txt.gz")
    sd = oc.to_openai(hf_dir)

    # official modules: plot-pp (clip package, trainers) and Dassl.pytorch (engine, optim, metrics)
    import mockimports

    sys.path.insert(0, str(dassl_root))
    sys.path.insert(0, str(root / "plot-pp"))
    with mockimports.mocked(MOCKED):
        clip_mod = importlib.import_module("clip.clip")
        model_mod = importlib.import_module("clip.model")
        st_mod = importlib.import_module("clip.simple_tokenizer")
        importlib.import_module("dassl.engine")
        trainer_mod = importlib.import_module("dassl.engine.trainer")
        optim_mod = importlib.import_module("dassl.optim")
        pp = importlib.import_module("trainers.plotpp")
    for m in (clip_mod, model_mod, pp):
        assert Path(m.__file__).resolve().is_relative_to(root), m.__file__
    for m in (trainer_mod, optim_mod):
        assert Path(m.__file__).resolve().is_relative_to(dassl_root), m.__file__

    # ---- stubs --------------------------------------------------------------------------------
    oc.use_tiny_tokenizer(clip_mod, st_mod, gz, pp)  # clip.tokenize and plotpp's name_lens
    pp.load_clip_to_cpu = lambda cfg: oc.build_official(model_mod, sd)  # build_model(sd).float()
    spy = TorchSpy()
    pp.torch = spy
    cfg = make_cfg()

    # The official checks that the state dict fits plot-pp's (prompted) VisionTransformer.
    clip_model = pp.load_clip_to_cpu(cfg)
    assert (
        clip_model.visual.transformer.width == SIZE["width"] and clip_model.transformer.width == SIZE["width"]
    )
    assert clip_model.visual.transformer.resblocks[0].attn.num_heads == SIZE["heads"]

    trainer = pp.PLOTPP.__new__(pp.PLOTPP)  # no __init__: it builds Dassl's data loaders
    trainer_mod.TrainerBase.__init__(trainer)
    trainer.cfg = cfg
    trainer.dm = SimpleNamespace(dataset=SimpleNamespace(classnames=list(CLASSNAMES)))
    trainer.batch_idx, trainer.num_batches = 0, 10**9  # forward_backward never calls update_lr()
    trainer.check_cfg(cfg)

    # PLOTPP.build_model, line by line, without its .to("cuda:0") (CPU here):
    if cfg.TRAINER.PLOTPP.PREC == "fp32" or cfg.TRAINER.PLOTPP.PREC == "amp":
        clip_model.float()
    torch.manual_seed(PROMPT_SEED)
    model = pp.CustomCLIP(cfg, list(CLASSNAMES), clip_model)
    name_tp_update = cfg.TRAINER.PLOTPP.MODEL_UPD
    for name, param in model.named_parameters():
        if "prompt_learner" not in name:
            param.requires_grad_(False)
        else:
            if name_tp_update == "vision" and name_tp_update not in name:
                param.requires_grad_(False)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["prompt_learner.ctx", "prompt_learner.ctx_vision"], trainable
    trainer.model = model
    trainer.device = torch.device("cpu")
    trainer.optim = optim_mod.build_optimizer(model, cfg.OPTIM)
    trainer.sched = optim_mod.build_lr_scheduler(trainer.optim, cfg.OPTIM)
    trainer.register_model("prompt_learner", model, trainer.optim, trainer.sched)
    trainer.scaler = None
    trainer.set_model_mode("train")

    pl = model.prompt_learner
    ctx_init = pl.ctx.detach().clone()
    ctx_vision_init = pl.ctx_vision.detach().clone()

    # ---- inputs -------------------------------------------------------------------------------
    g = torch.Generator().manual_seed(PIXEL_SEED)
    size = SIZE["image_size"]
    pixels = torch.randn(N_IMAGES, 3, size, size, generator=g)
    labels = torch.tensor(LABELS)
    batch = {"img": pixels, "label": labels}

    # ---- step-0 record ---------------------------------------------------------------------------
    captured = {}
    official_sinkhorn = model.Sinkhorn

    def sinkhorn_spy(K, u, v):
        before = spy.matmuls
        T = official_sinkhorn(K, u, v)
        captured.update(K=K.detach().clone(), T=T.detach().clone(), matmuls=spy.matmuls - before)
        return T

    model.Sinkhorn = sinkhorn_spy  # the official method, called through; records its input and plan

    M, N, C, B = cfg.TRAINER.PLOTPP.M, cfg.TRAINER.PLOTPP.N, len(CLASSNAMES), N_IMAGES
    with torch.no_grad():
        prompts, vision_prompts = pl()
        image_features = model.image_encoder(pixels, vision_prompts)  # (M, B, D)
        text_features = model.text_encoder(prompts, pl.tokenized_prompts)  # (N*C, D)
        spy.einsum_out.clear()
        logits_ot = model(pixels)
        sim = spy.einsum_out[-1]  # (M, N, B, C)
        T = captured["T"]  # (B*C, M, N)
        iters = (captured["matmuls"] - 1) // 2  # two matmuls per iteration + the final plan
        model.tradeoff = True
        logits_tradeoff = model(pixels)
        model.tradeoff = cfg.TRAINER.PLOTPP.TRADE_OFF
    # gradient of the vision stage's loss (TRADE_OFF True) w.r.t. ctx_vision, for reference only
    model.tradeoff = True
    loss_v = torch.nn.functional.cross_entropy(model(pixels), labels)
    grad_ctx_vision_tradeoff = torch.autograd.grad(loss_v, pl.ctx_vision)[0]
    model.tradeoff = cfg.TRAINER.PLOTPP.TRADE_OFF

    # capture the gradients the optimizer sees at each official step
    seen = {}

    def pre_step(opt, a, kw):
        seen["ctx"] = pl.ctx.grad.detach().clone()
        seen["ctx_vision"] = pl.ctx_vision.grad.detach().clone()
        seen["lr"] = opt.param_groups[0]["lr"]

    trainer.optim.register_step_pre_hook(pre_step)

    steps = []
    for step in range(N_STEPS):
        with torch.no_grad():
            logits_before = model(pixels)
        summary = trainer.forward_backward(batch)  # official: forward, cross_entropy, backward, SGD step
        steps.append(
            {
                "step": step + 1,
                "logits": oc.tolist(logits_before),
                "summary": summary,
                "grad_ctx": oc.tolist(seen["ctx"]),
                "grad_ctx_vision": oc.tolist(seen["ctx_vision"]),
                "lr": seen["lr"],
                "ctx_after": oc.tolist(pl.ctx),
                "ctx_vision_after": oc.tolist(pl.ctx_vision),
            }
        )

    res = {
        "method": "plot++",
        "official": {
            "repo": "CHENGY12/PLOT",
            "commit": args.commit,
            "dassl_repo": "KaiyangZhou/Dassl.pytorch",
            "dassl_commit": args.dassl_commit,
            "files": [
                "plot-pp/trainers/plotpp.py (MultiModalPromptLearner, CustomCLIP incl. Sinkhorn and forward, "
                "TextEncoder, PLOTPP.check_cfg / forward_backward / parse_batch_train; build_model's lines "
                "replicated without its .to('cuda:0'))",
                "plot-pp/clip (model.py build_model and the prompted VisionTransformer, simple_tokenizer.py, "
                "clip.py tokenize)",
                "Dassl.pytorch dassl/engine/trainer.py (TrainerBase.register_model, set_model_mode, "
                "model_backward_and_update)",
                "Dassl.pytorch dassl/optim (build_optimizer, build_lr_scheduler)",
            ],
        },
        "tiny_checkpoint": {
            "how": "vlpeft.backbones.init_tiny(dir, family='clip', seed=seed, size=TinySize(**size))",
            "seed": TINY_SEED,
            "size": SIZE,
            "why_width_768": "MultiModalPromptLearner hard-codes the vision prompt width: "
            "torch.empty(M, n_ctx_vision, 768); build_model needs heads = width // 64, mlp = 4 * width",
            "openai_state_dict_sha256": oc.sd_digest(sd),
        },
        "stubs": {
            **oc.STUBS,
            "cfg": oc.ns_to_dict(cfg),
            "load_clip_to_cpu": "returns plot-pp clip build_model(to_openai(tiny)).float()",
            "trainers.plotpp._tokenizer": "the same tiny-BPE SimpleTokenizer (used for name_lens)",
            "trainers.plotpp.torch": "a pass-through proxy of torch (TorchSpy) that records einsum outputs "
            "(the similarity) and counts matmul calls (Sinkhorn iterations); computes nothing differently",
            "CustomCLIP.Sinkhorn": "instance attribute wrapping the official bound method (records K and T)",
            "build_model": "PLOTPP.build_model replicated line by line (clip_model.float(), CustomCLIP, the "
            "MODEL_UPD freezing loop, build_optimizer(model, OPTIM) on the whole model, build_lr_scheduler, "
            "register_model('prompt_learner', ...)) without PRETRAIN_DIR loading and .to('cuda:0'); "
            "torch.manual_seed(prompt_seed) right before CustomCLIP",
            "trainer": "PLOTPP.__new__ + TrainerBase.__init__ (no data manager); trainer.dm.dataset.classnames "
            "= class names; device cpu; batch_idx=0, num_batches=1e9 so forward_backward never steps the "
            "scheduler; set_model_mode('train'); scaler None",
            "trade_off": "cfg TRADE_OFF False; logits_trade_off and grad_ctx_vision_trade_off set "
            "model.tradeoff = True (the attribute CustomCLIP.__init__ copies from the cfg) for that call only",
            "tensorboard, gdown, tabulate, wilds": "MagicMock import stubs (Dassl's engine and data "
            "pipeline import them; unused)",
        },
        "settings": {
            "precision": "fp32 (PREC='fp32'), CPU, no autocast",
            "optimizer": "Dassl build_optimizer(model, OPTIM): torch.optim.SGD(lr=0.002, momentum=0.9, "
            "weight_decay=5e-4, dampening=0, nesterov=False) on all of CustomCLIP's parameters (frozen ones "
            "have no grad, so only ctx and ctx_vision move)",
            "scheduler": "Dassl build_lr_scheduler cosine T_max=50, no warmup (WARMUP_EPOCH=-1), never stepped: "
            "lr 0.002 in both steps. NB the official yaml warms up 1 epoch at constant lr 1e-5.",
            "steps": f"{N_STEPS} x trainer.forward_backward(batch) with the same batch (TRADE_OFF False, "
            "MODEL_UPD joint: ctx and ctx_vision trained)",
            "sinkhorn": "eps 0.1, max_iter 100, thresh 1e-2 on the mean |r - r0| over all B*C problems",
            "prompt_seed": PROMPT_SEED,
        },
        "inputs": {
            "classnames": CLASSNAMES,
            "dataset_name": DATASET,
            "pixels_seed": PIXEL_SEED,
            "pixels_how": f"torch.randn({N_IMAGES}, 3, {size}, {size}, generator=torch.Generator().manual_seed({PIXEL_SEED})) "
            "(already-normalised model input)",
            "pixels": oc.tolist(pixels),
            "labels": LABELS,
        },
        "outputs": {
            "M": M,
            "N": N,
            "n_ctx": pl.n_ctx,
            "n_ctx_vision": cfg.TRAINER.PLOTPP.N_CTX_V,
            "ctx_init": oc.tolist(ctx_init),
            "ctx_vision_init": oc.tolist(ctx_vision_init),
            "tokenized_prompts": oc.tolist(pl.tokenized_prompts),
            "eot_positions": oc.tolist(pl.tokenized_prompts.argmax(-1)),
            "name_lens": pl.name_lens,
            "token_prefix_shape": list(pl.token_prefix.shape),
            "token_suffix_shape": list(pl.token_suffix.shape),
            "image_features": oc.tolist(image_features),
            "text_features": oc.tolist(text_features),
            "logit_scale": float(model.logit_scale.exp()),
            "sim": oc.tolist(sim.permute(2, 3, 0, 1)),
            "transport_plan": oc.tolist(T.view(B, C, M, N)),
            "sinkhorn_iterations": iters,
            "logits": oc.tolist(logits_ot),
            "logits_trade_off": oc.tolist(logits_tradeoff),
            "loss": steps[0]["summary"]["loss"],
            "grad_ctx": steps[0]["grad_ctx"],
            "grad_ctx_vision": steps[0]["grad_ctx_vision"],
            "grad_ctx_vision_trade_off": oc.tolist(grad_ctx_vision_tradeoff),
            "steps": steps,
        },
    }
    Path(args.out).write_text(json.dumps(res))
    print(
        json.dumps(
            {
                "logits": res["outputs"]["logits"],
                "logits_trade_off": res["outputs"]["logits_trade_off"],
                "loss": res["outputs"]["loss"],
                "losses": [s["summary"]["loss"] for s in steps],
                "sinkhorn_iterations": iters,
                "eot": res["outputs"]["eot_positions"],
                "ids0": res["outputs"]["tokenized_prompts"][0][:12],
                "suffix": res["outputs"]["token_suffix_shape"],
            }
        )
    )


if __name__ == "__main__":
    main()
