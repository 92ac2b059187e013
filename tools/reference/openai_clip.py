"""Bridge between vlpeft's tiny HF CLIP checkpoints and OpenAI's ``clip/model.py`` layout.

Library part (imported by the reference generators):
  to_openai(hf_dir)                -> OpenAI-layout fp32 state dict of the HF ``CLIPModel``
  write_simple_bpe(hf_dir, gz)     -> the tiny checkpoint's BPE merges as OpenAI's
                                      ``bpe_simple_vocab_16e6.txt.gz`` format
  build_official(model_mod, sd)    -> official ``build_model(sd).float()`` (with the
                                      ``convert_weights`` fp16 cast disabled, see STUBS)
  use_tiny_tokenizer(clip_mod, st_mod, gz) -> installs an official ``SimpleTokenizer`` reading
                                      the tiny BPE as the ``clip`` module's ``_tokenizer``
  import_official_clip(root)       -> imports ``root/clip`` (an official repo's clip package)
  TINY                             -> the TinySize used for every reference

Script part (Step 1): ``python openai_clip.py --official <repo with clip/> --out verify.json``
checks official encode_image / encode_text / token_embedding / tokenize against vlpeft.

Why TinySize(width=128, heads=2, mlp=512) and not vlpeft's default TinySize (32/2/64):
OpenAI's ``build_model`` hard-codes ``heads = width // 64`` (both towers) and its
``ResidualAttentionBlock`` hard-codes ``mlp = 4 * width``; the default tiny (width 32,
mlp 64) has no OpenAI equivalent (width // 64 == 0 heads). Width 128 gives 2 heads of 64 and
mlp 512, which ``build_model`` infers unchanged.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # mockimports.py
try:
    import ftfy
except ImportError:  # fallback stub; ftfy.fix_text is the identity on the ASCII prompts used here
    import types as _types

    ftfy = _types.ModuleType("ftfy")
    ftfy.fix_text = lambda text: text
    sys.modules["ftfy"] = ftfy

TINY = dict(
    width=128, layers=2, heads=2, mlp=512, embed_dim=16, image_size=32, patch_size=8, context_length=77
)
TINY_SEED = 0
MOCKED = ["torchvision", "torch.utils.tensorboard", "gdown"]

STUBS = {
    "torchvision": "Imported by official clip/clip.py (preprocess transforms) and Dassl's data "
    "pipeline only; replaced by MagicMock modules (mockimports.py). Never used in a computation.",
    "clip.model.convert_weights": "Disabled (identity) while build_model runs: it casts the model to fp16 "
    "before load_state_dict, which would round the tiny fp32 weights to fp16 (real OpenAI checkpoints "
    "are fp16 already, so for them it is lossless). Everything else in build_model is official "
    "(it infers all sizes from the state dict).",
    "clip.clip._tokenizer": "Replaced by the official SimpleTokenizer constructed with bpe_path = the "
    "tiny checkpoint's merges.txt written in bpe_simple_vocab_16e6.txt.gz format (header line + merges, "
    "no trailing newline); the vocab layout (256 bytes, 256 bytes+</w>, merges, <|startoftext|>, "
    "<|endoftext|>) is identical to the tiny vocab.json.",
}


def make_tiny(directory: str | os.PathLike, seed: int = TINY_SEED) -> Path:
    from vlpeft.backbones.tiny import TinySize, init_tiny

    return init_tiny(directory, family="clip", seed=seed, size=TinySize(**TINY), overwrite=True)


def _hf_state(hf_dir):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(hf_dir), torch_dtype=torch.float32)
    cfg = model.config
    for tower in (cfg.text_config, cfg.vision_config):
        if tower.hidden_act != "quick_gelu":
            raise ValueError(f"OpenAI's CLIP uses QuickGELU; this checkpoint uses {tower.hidden_act}.")
        if tower.intermediate_size != 4 * tower.hidden_size:
            raise ValueError("OpenAI's ResidualAttentionBlock needs intermediate_size == 4 * hidden_size.")
        if tower.hidden_size // 64 != tower.num_attention_heads:
            raise ValueError("OpenAI's build_model infers heads = width // 64.")
        if abs(tower.layer_norm_eps - 1e-5) > 0:
            raise ValueError("OpenAI's LayerNorm uses eps 1e-5.")
    return model.state_dict(), cfg


def to_openai(hf_dir) -> dict[str, torch.Tensor]:
    """OpenAI ``clip/model.py`` state dict (fp32) of the HF ``CLIPModel`` saved in ``hf_dir``."""
    sd, cfg = _hf_state(hf_dir)
    out: dict[str, torch.Tensor] = {}

    def blocks(hf_prefix: str, oa_prefix: str, layers: int) -> None:
        for i in range(layers):
            h, o = f"{hf_prefix}.encoder.layers.{i}", f"{oa_prefix}.resblocks.{i}"
            a = f"{h}.self_attn"
            out[f"{o}.attn.in_proj_weight"] = torch.cat([sd[f"{a}.{m}_proj.weight"] for m in "qkv"], 0)
            out[f"{o}.attn.in_proj_bias"] = torch.cat([sd[f"{a}.{m}_proj.bias"] for m in "qkv"], 0)
            out[f"{o}.attn.out_proj.weight"] = sd[f"{a}.out_proj.weight"]
            out[f"{o}.attn.out_proj.bias"] = sd[f"{a}.out_proj.bias"]
            for hn, on in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2")):
                out[f"{o}.{on}.weight"] = sd[f"{h}.{hn}.weight"]
                out[f"{o}.{on}.bias"] = sd[f"{h}.{hn}.bias"]
            for hn, on in (("fc1", "c_fc"), ("fc2", "c_proj")):
                out[f"{o}.mlp.{on}.weight"] = sd[f"{h}.mlp.{hn}.weight"]
                out[f"{o}.mlp.{on}.bias"] = sd[f"{h}.mlp.{hn}.bias"]

    # text tower
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    blocks("text_model", "transformer", cfg.text_config.num_hidden_layers)
    out["ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out["ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].t()  # (width, embed)
    # vision tower
    out["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
    out["visual.conv1.weight"] = sd["vision_model.embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = sd["vision_model.embeddings.position_embedding.weight"]
    out["visual.ln_pre.weight"] = sd["vision_model.pre_layrnorm.weight"]
    out["visual.ln_pre.bias"] = sd["vision_model.pre_layrnorm.bias"]
    blocks("vision_model", "visual.transformer", cfg.vision_config.num_hidden_layers)
    out["visual.ln_post.weight"] = sd["vision_model.post_layernorm.weight"]
    out["visual.ln_post.bias"] = sd["vision_model.post_layernorm.bias"]
    out["visual.proj"] = sd["visual_projection.weight"].t()  # (width, embed)
    out["logit_scale"] = sd["logit_scale"].reshape(())
    if "vision_model.embeddings.patch_embedding.bias" in sd:
        raise ValueError("OpenAI's conv1 has no bias.")
    return {k: v.detach().clone().float().contiguous() for k, v in out.items()}


def write_simple_bpe(hf_dir, gz_path) -> Path:
    """The tiny tokenizer's merges in OpenAI's bpe gz format (so SimpleTokenizer rebuilds its vocab)."""
    hf_dir, gz_path = Path(hf_dir), Path(gz_path)
    lines = (hf_dir / "merges.txt").read_text(encoding="utf-8").rstrip("\n").split("\n")
    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    n_merges = len(lines) - 1
    if len(vocab) != 512 + n_merges + 2:
        raise ValueError("vocab.json does not have OpenAI's layout (duplicate merge products?).")
    # No trailing newline: SimpleTokenizer keeps every line after the header (an empty last line
    # would become an extra vocab entry and shift the special tokens).
    with gzip.open(gz_path, "wb") as f:
        f.write("\n".join(lines).encode("utf-8"))
    return gz_path


def import_official_clip(root):
    """Import ``<root>/clip`` (an official repo's copy of OpenAI's clip package)."""
    import mockimports

    root = str(Path(root).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    with mockimports.mocked(MOCKED):
        clip_pkg = importlib.import_module("clip")
        mods = (
            importlib.import_module("clip.clip"),
            importlib.import_module("clip.model"),
            importlib.import_module("clip.simple_tokenizer"),
        )
    if not Path(clip_pkg.__file__).resolve().is_relative_to(root):
        raise ImportError(f"'clip' resolved to {clip_pkg.__file__}, not under {root}")
    return mods


def use_tiny_tokenizer(clip_mod, simple_tokenizer_mod, gz_path, *also):
    """Make ``clip.tokenize`` (and any module in ``also`` with a ``_tokenizer``) use the tiny BPE."""
    tok = simple_tokenizer_mod.SimpleTokenizer(bpe_path=str(gz_path))
    clip_mod._tokenizer = tok
    for mod in also:
        mod._tokenizer = tok
    return tok


def build_official(model_mod, state_dict):
    """Official ``build_model(state_dict).float()`` without the lossy fp16 round trip."""
    original = model_mod.convert_weights
    model_mod.convert_weights = lambda model: None
    try:
        model = model_mod.build_model({k: v.clone() for k, v in state_dict.items()})
    finally:
        model_mod.convert_weights = original
    return model.float()


def tolist(t: torch.Tensor):
    return t.detach().cpu().double().tolist() if t.is_floating_point() else t.detach().cpu().tolist()


# ---- helpers shared by the generators ------------------------------------------------------------


def dassl_sgd_optim():
    """Dassl's OPTIM config node for the papers' SGD recipe (lr 0.002, momentum 0.9, weight decay 5e-4,
    cosine) with Dassl's defaults for the rest; WARMUP_EPOCH=-1 (the yaml files have 1 epoch of
    constant lr 1e-5), so the lr stays 0.002 over the few steps a reference takes."""
    from types import SimpleNamespace as NS

    return NS(
        NAME="sgd",
        LR=0.002,
        WEIGHT_DECAY=5e-4,
        MOMENTUM=0.9,
        SGD_DAMPNING=0,
        SGD_NESTEROV=False,
        RMSPROP_ALPHA=0.99,
        ADAM_BETA1=0.9,
        ADAM_BETA2=0.999,
        STAGED_LR=False,
        NEW_LAYERS=(),
        BASE_LR_MULT=0.1,
        LR_SCHEDULER="cosine",
        STEPSIZE=(-1,),
        GAMMA=0.1,
        MAX_EPOCH=50,
        WARMUP_EPOCH=-1,
        WARMUP_TYPE="constant",
        WARMUP_CONS_LR=1e-5,
        WARMUP_MIN_LR=1e-5,
        WARMUP_RECOUNT=True,
    )


def ns_to_dict(ns):
    """A (nested) SimpleNamespace config as JSON-able dicts (recorded in the outputs)."""
    from types import SimpleNamespace

    if isinstance(ns, SimpleNamespace):
        return {k: ns_to_dict(v) for k, v in vars(ns).items()}
    if isinstance(ns, tuple):
        return list(ns)
    return ns


def sd_digest(sd: dict) -> str:
    """SHA-256 of a state dict's names and float32 values (identifies the converted tiny checkpoint)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---- Step 1 verification ---------------------------------------------------------------------
def verify(official: str, out: str | None, workdir: str) -> dict:
    from vlpeft.backbones import load_backbone

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    hf_dir = make_tiny(work / "tiny_clip")
    gz = write_simple_bpe(hf_dir, work / "tiny_bpe.txt.gz")
    clip_mod, model_mod, st_mod = import_official_clip(official)
    use_tiny_tokenizer(clip_mod, st_mod, gz)

    sd = to_openai(hf_dir)
    oa = build_official(model_mod, sd).eval()
    bb = load_backbone("local:" + str(hf_dir)).eval()
    res: dict = {"tiny": {**TINY, "seed": TINY_SEED}, "stubs": STUBS}
    res["official_inferred"] = {
        "input_resolution": oa.visual.input_resolution,
        "context_length": oa.context_length,
        "vocab_size": oa.vocab_size,
        "text_heads": oa.transformer.resblocks[0].attn.num_heads,
        "vision_heads": oa.visual.transformer.resblocks[0].attn.num_heads,
        "logit_scale_exp": float(oa.logit_scale.exp()),
    }
    res["vlpeft"] = {
        "context_length": bb.context_length,
        "vocab_size": bb.token_embedding.num_embeddings,
        "eos_token_id": bb.eos_token_id,
        "logit_scale": float(bb.logit_scale),
    }

    g = torch.Generator().manual_seed(123)
    pixels = torch.randn(5, 3, TINY["image_size"], TINY["image_size"], generator=g)
    with torch.no_grad():
        a, b = oa.encode_image(pixels), bb.encode_image(pixels)
    res["encode_image_max_abs_diff"] = float((a - b).abs().max())
    res["encode_image_max_abs"] = float(a.abs().max())

    prompts = [
        "a photo of a cat.",
        "a type of pet, a photo of a abyssinian.",
        "X X X X a centered satellite photo of forest.",
        "a photo of a sphynx.",
        "itap of a beagle!",
        "Striped   texture 123",
    ]
    t_off = clip_mod.tokenize(prompts)
    t_vl = bb.tokenize(prompts)
    eot_off = t_off.argmax(-1)
    eot_vl = bb.eot_index(t_vl)
    same_ids = all(
        torch.equal(t_off[i, : int(eot_off[i]) + 1], t_vl[i, : int(eot_vl[i]) + 1])
        for i in range(len(prompts))
    )
    res["tokenize"] = {
        "prompts": prompts,
        "ids_equal_up_to_eot": same_ids,
        "eot_equal": bool(torch.equal(eot_off, eot_vl)),
        "padding_official": int(t_off[0, -1]),
        "padding_vlpeft": int(t_vl[0, -1]),
        "official_ids": [r[: int(e) + 1] for r, e in zip(t_off.tolist(), eot_off.tolist(), strict=False)],
    }
    # random token ids (any content) ending in EOT, official zero padding after it
    ids = torch.randint(0, 843, (4, 77), generator=g)
    ids[:, 0] = 843
    lens = torch.tensor([5, 17, 40, 76])
    for i, n in enumerate(lens.tolist()):
        ids[i, n] = 844
        ids[i, n + 1 :] = 0
    ids_vl = ids.clone()
    for i, n in enumerate(lens.tolist()):
        ids_vl[i, n + 1 :] = 844
    with torch.no_grad():
        a = oa.encode_text(ids)
        b = bb.encode_text(ids_vl)
        b2 = bb.encode_text(clip_mod.tokenize(prompts))  # official zero padding fed to vlpeft
        a2 = oa.encode_text(clip_mod.tokenize(prompts))
        te = (oa.token_embedding.weight - bb.token_embedding.weight).abs().max()
    res["encode_text_max_abs_diff"] = float((a - b).abs().max())
    res["encode_text_prompts_max_abs_diff"] = float((a2 - b2).abs().max())
    res["encode_text_max_abs"] = float(a.abs().max())
    res["token_embedding_max_abs_diff"] = float(te)
    # text embeddings path used by prompt learners
    with torch.no_grad():
        emb = bb.token_embedding(ids_vl)
        c = bb.encode_text_embeddings(emb, bb.eot_index(ids_vl))
    res["encode_text_embeddings_max_abs_diff"] = float((a - c).abs().max())
    ok = (
        max(
            res["encode_image_max_abs_diff"],
            res["encode_text_max_abs_diff"],
            res["encode_text_prompts_max_abs_diff"],
            res["token_embedding_max_abs_diff"],
        )
        < 1e-5
        and same_ids
    )
    res["ok"] = bool(ok)
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="checkout containing clip/ (e.g. KaiyangZhou/CoOp)")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--workdir", default=tempfile.mkdtemp(prefix="vlpeft-reference-"))
    args = ap.parse_args()
    r = verify(args.official, args.out, args.workdir)
    r["official_commit"] = args.commit
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=1))
    print(json.dumps({k: v for k, v in r.items() if k not in ("stubs",)}, indent=1))
    sys.exit(0 if r["ok"] else 1)
