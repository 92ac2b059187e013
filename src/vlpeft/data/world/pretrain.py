"""Pretrain vlpeft's embedded CLIP on generated image-caption pairs.

``python -m vlpeft.data.world.pretrain --out DIR [--steps 2600] [--seed 0]`` trains a small
transformers ``CLIPModel`` (ViT 64px/8, width 160, 6 layers; text width 128, 4 layers) with the
symmetric contrastive loss on pairs drawn by :func:`vlpeft.data.world.scenes.pretrain_pair`
(pair ``i`` of seed ``s`` is always the same; with ``--contrast-groups`` consecutive pairs come in
groups of ``scenes.GROUP`` that differ in one attribute, so a batch holds hard negatives — the
batch size must then be a multiple of ``GROUP``), and writes a ``save_pretrained`` directory with
its own BPE tokenizer (learned on the world's captions) and ``preprocessor_config.json``.
Every ``--save-every`` steps it keeps a resumable checkpoint in ``DIR.partial``. The shipped
checkpoint (``vlpeft/assets/embedded``) was made with the defaults on a 2-core CPU; runs are
reproducible from the seed on the same software and hardware (BLAS may differ elsewhere).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlpeft.backbones.tokenizers import write_clip_tokenizer
from vlpeft.data.templates import IMAGENET_TEMPLATES
from vlpeft.data.transforms import ImageTransform
from vlpeft.data.world.render import render
from vlpeft.data.world.scenes import GROUP, pretrain_pair
from vlpeft.data.world.vocab import COLORS, COUNTS, PATTERNS, SHAPES, SIZES, STYLES
from vlpeft.errors import ConfigError
from vlpeft.io import atomic_directory

logger = logging.getLogger("vlpeft.pretrain")

IMAGE_SIZE = 64
CONTEXT = 32
MODEL = dict(
    vision=dict(hidden_size=160, intermediate_size=640, num_hidden_layers=6, num_attention_heads=4),
    text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=2),
    projection_dim=128,
)


def tokenizer_corpus(seed: int, n: int = 20000, contrast: bool = False) -> list[str]:
    """Captions of the world plus every prompt template vlpeft uses, so their words are single tokens."""
    from vlpeft.data.world.datasets import WORLD_TEMPLATES

    words = [*SHAPES, *(p for p, _ in SHAPES.values()), *COLORS, *PATTERNS, *SIZES, *COUNTS, *STYLES]
    return (
        [pretrain_pair(seed * 10**9 + i, contrast)[1] for i in range(n)]
        + list(IMAGENET_TEMPLATES)
        + [*WORLD_TEMPLATES, " ".join(words)]
    )


class Pairs(IterableDataset):
    """Endless (pixels, caption) pairs; pair ``start + k`` for k = 0, 1, ... (split across workers)."""

    def __init__(self, seed: int, start: int, transform: ImageTransform, contrast: bool = False):
        self.seed, self.start, self.transform, self.contrast = seed, start, transform, contrast

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        k = self.start + worker
        while True:
            scene, text = pretrain_pair(self.seed * 10**9 + k, self.contrast)
            yield self.transform(render(scene, IMAGE_SIZE)), text
            k += workers


def build_model(vocab_size: int, seed: int):
    from transformers import CLIPConfig, CLIPModel

    text = dict(MODEL["text"], vocab_size=vocab_size, max_position_embeddings=CONTEXT)
    text.update(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(MODEL["vision"], image_size=IMAGE_SIZE, patch_size=8)
    torch.manual_seed(seed)
    return CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=MODEL["projection_dim"])
    )


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def contrastive_loss(model, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    text = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * image @ text.t()
    target = torch.arange(len(ids))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def train(args: argparse.Namespace) -> Path:
    from transformers import AutoTokenizer

    if args.contrast_groups and args.batch_size % GROUP:
        raise ConfigError(
            f"--batch-size {args.batch_size} splits the contrast groups of {GROUP} pairs; "
            f"use a multiple of {GROUP}."
        )
    torch.set_num_threads(args.threads)
    partial = Path(f"{args.out}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    if not (partial / "vocab.json").exists():
        write_clip_tokenizer(
            partial, tokenizer_corpus(args.seed, contrast=args.contrast_groups), max_length=CONTEXT
        )
    tokenizer = AutoTokenizer.from_pretrained(partial)
    model = build_model(len(tokenizer), args.seed)
    params_decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    params_other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": params_decay, "weight_decay": args.weight_decay},
            {"params": params_other, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    step, history = _resume(partial, model, optimizer)
    transform = ImageTransform(shortest_edge=IMAGE_SIZE, crop=(IMAGE_SIZE, IMAGE_SIZE))
    loader = DataLoader(
        Pairs(args.seed, step * args.batch_size, transform, args.contrast_groups),
        batch_size=args.batch_size,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    start = time.perf_counter()
    model.train()
    for pixels, texts in loader:
        if step >= args.steps:
            break
        ids = tokenizer(
            list(texts), padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt"
        )["input_ids"]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        loss = contrastive_loss(model, pixels, ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        history.append(round(loss.item(), 4))
        if step % args.log_every == 0:
            rate = args.log_every * args.batch_size / max(time.perf_counter() - start, 1e-9)
            logger.info(
                "step %d/%d loss %.3f (%.0f pairs/s)",
                step,
                args.steps,
                sum(history[-args.log_every :]) / args.log_every,
                rate,
            )
            start = time.perf_counter()
        if step % args.save_every == 0 or step == args.steps:
            _checkpoint(partial, model, optimizer, step, history)
    return _finish(args, partial, model, history)


def _checkpoint(partial: Path, model, optimizer, step: int, history: list[float]) -> None:
    tmp = partial / "state.pt.tmp"
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "history": history},
        tmp,
    )
    os.replace(tmp, partial / "state.pt")


def _resume(partial: Path, model, optimizer) -> tuple[int, list[float]]:
    path = partial / "state.pt"
    if not path.exists():
        return 0, []
    state = torch.load(path, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    logger.info("resuming from step %d", state["step"])
    return state["step"], state["history"]


def _finish(args: argparse.Namespace, partial: Path, model, history: list[float]) -> Path:
    model.eval()
    with atomic_directory(args.out, overwrite=True) as tmp:
        model.to(torch.float16 if args.half else torch.float32).save_pretrained(tmp)
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            (tmp / name).write_bytes((partial / name).read_bytes())
        transform = ImageTransform(shortest_edge=IMAGE_SIZE, crop=(IMAGE_SIZE, IMAGE_SIZE))
        processor = {"image_processor_type": "CLIPImageProcessor", **transform.to_processor_config()}
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
        record = {
            "args": vars(args),
            "model": MODEL,
            "image_size": IMAGE_SIZE,
            "context_length": CONTEXT,
            "loss_every_step": history,
        }
        (tmp / "pretrain_log.json").write_text(json.dumps(record))
    return Path(args.out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    parser.add_argument("--steps", type=int, default=2600)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.2)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="processes rendering the pairs")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument(
        "--contrast-groups",
        action="store_true",
        help="draw pairs in groups differing in one attribute (hard negatives; off for the shipped model)",
    )
    parser.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    random.seed(args.seed)
    out = train(args)
    logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
