"""Pretrain vlpeft's embedded CLIP on generated image-caption pairs.

``python -m vlpeft.world.pretrain --out DIR [--steps 2600] [--seed 0]`` trains a small
transformers ``CLIPModel`` (ViT 64px/8, width 160, 6 layers; text width 128, 4 layers) with the
symmetric contrastive loss on pairs drawn by :func:`vlpeft.world.scenes.pretrain_pair`
(pair ``i`` of seed ``s`` is always the same; with ``--contrast-groups`` consecutive pairs come in
groups of ``scenes.GROUP`` that differ in one attribute, so a batch holds hard negatives — the
batch size must then be a multiple of ``GROUP``), and writes a ``save_pretrained`` directory with
its own BPE tokenizer (learned on the world's captions) and ``preprocessor_config.json``.

Two choices make a useful image tower affordable on a CPU budget (defaults, both switchable):

- ``--aux-weight 1.0 --aux-attributes shape,color,pattern,count``: beside the contrastive loss, a
  cosine classifier on the normalised image embedding predicts what the generator drew (of
  ``scene_attributes``: shape, colour, pattern, count, size, style, background; the default
  predicts the four that downstream classes are made of): a dense supervised signal for the
  image tower, in the spirit of LiT's supervised tower. With contrastive learning alone, after
  2600 steps a linear probe on 340 labelled images per class reached 47% on WorldShapes (12
  classes) and zero-shot 45%; with the head (then at weight 0.5 on all seven attributes), 60% and
  57%. The head is dropped when saving: the checkpoint is a plain ``CLIPModel``.
- ``--logit-scale 100``: the temperature starts at CLIP's final, clamped value (CLIP starts at
  1/0.07 and reaches the clamp), so cosine gaps are as narrow as real CLIP's and methods whose
  official code hard-codes ``100 x cos`` (Tip-Adapter, APE) see the geometry they were tuned for.
  Started at 1/0.07, this small model settled at 23 and Tip-Adapter-F's cache could not move
  its predictions.

The captions (``scenes.caption``) name a shape, a pattern or a count exactly only now and then
(``scenes.P_SHAPE_WORD`` …) and say "a polygon", "patterned" or "several" otherwise, as web
alt-text does. When every caption named the exact class words, the text tower learned them as
well as the image features allowed and zero-shot matched a linear probe on 340 images per class
(WorldShapes 57% vs 60%): no few-shot method had anything to win. With rare words, the shipped
checkpoint's zero-shot trails a 16-shot probe as real CLIP's does on DTD or FGVC-Aircraft.

``--init DIR`` continues from a saved checkpoint (its weights and tokenizer, a fresh head and
schedule; give it a new ``--seed`` for new pairs).

Every ``--save-every`` steps it keeps a resumable checkpoint in ``DIR.partial``. The shipped
checkpoint (``vlpeft/assets/embedded``) was made with the defaults on a 2-core CPU (2600 steps,
67 min); runs are reproducible from the seed on the same software and hardware (BLAS may differ
elsewhere).
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
from vlpeft.errors import ConfigError
from vlpeft.io import atomic_directory
from vlpeft.world.render import Scene, render
from vlpeft.world.scenes import GROUP, pretrain_pair
from vlpeft.world.vocab import BACKGROUNDS, COLORS, COUNTS, PATTERNS, PRETRAIN_STYLES, SHAPES, SIZES, STYLES

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
    from vlpeft.world.datasets import WORLD_TEMPLATES

    words = [*SHAPES, *(p for p, _ in SHAPES.values()), *COLORS, *PATTERNS, *SIZES, *COUNTS, *STYLES]
    return (
        [pretrain_pair(seed * 10**9 + i, contrast)[1] for i in range(n)]
        + list(IMAGENET_TEMPLATES)
        + [*WORLD_TEMPLATES, " ".join(words)]
    )


# What the auxiliary attribute head predicts from the image embedding: one softmax per attribute.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": tuple(SHAPES),
    "color": tuple(COLORS),
    "pattern": PATTERNS,
    "count": COUNTS,
    "size": SIZES,
    "style": PRETRAIN_STYLES,
    "background": BACKGROUNDS,
}
IGNORE = -100
# What downstream classes are made of (the default); size, style and background are nuisances the
# head need not teach.
CLASS_ATTRIBUTES = ("shape", "color", "pattern", "count")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
AUX_SCALE = 10.0  # the head is a cosine classifier: AUX_SCALE x cos(image embedding, value weight)


def scene_attributes(scene: Scene) -> torch.Tensor:
    """(len(ATTRIBUTES),) value indices of what ``scene`` draws (``IGNORE`` where not one value).

    Scenes of equal objects name their shape, colour, pattern and count; a full-frame texture
    only its colour and pattern; a pair of different objects only its count; a single object
    also its size. Every scene has a style and a background.
    """
    first = scene.objects[0]
    equal = len({(o.shape, o.color, o.pattern) for o in scene.objects}) == 1
    drawn = {"style": scene.style, "background": scene.background}
    if equal:
        drawn.update(color=first.color, pattern=first.pattern)
    if not scene.texture:
        drawn["count"] = COUNTS[min(len(scene.objects), len(COUNTS)) - 1]
        if equal:
            drawn["shape"] = first.shape
        if len(scene.objects) == 1:
            drawn["size"] = first.size
    return torch.tensor(
        [values.index(drawn[k]) if k in drawn else IGNORE for k, values in ATTRIBUTES.items()]
    )


class Pairs(IterableDataset):
    """Endless (pixels, caption, attributes) triples; pair ``start + k`` for k = 0, 1, ... (split
    across workers)."""

    def __init__(self, seed: int, start: int, transform: ImageTransform, contrast: bool = False):
        self.seed, self.start, self.transform, self.contrast = seed, start, transform, contrast

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        k = self.start + worker
        while True:
            scene, text = pretrain_pair(self.seed * 10**9 + k, self.contrast)
            yield self.transform(render(scene, IMAGE_SIZE)), text, scene_attributes(scene)
            k += workers


def build_model(vocab_size: int, seed: int, logit_scale: float = 100.0):
    """A randomly initialised ``CLIPModel`` of the embedded size; ``logit_scale`` is its initial
    exp(logit_scale) (CLIP starts at 1/0.07 and ends at its cap of 100)."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(MODEL["text"], vocab_size=vocab_size, max_position_embeddings=CONTEXT)
    text.update(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(MODEL["vision"], image_size=IMAGE_SIZE, patch_size=8)
    torch.manual_seed(seed)
    return CLIPModel(
        CLIPConfig(
            text_config=text,
            vision_config=vision,
            projection_dim=MODEL["projection_dim"],
            logit_scale_init_value=math.log(logit_scale),
        )
    )


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def attribute_loss(image: torch.Tensor, attributes: torch.Tensor, head: torch.nn.Linear) -> torch.Tensor:
    """Summed per-attribute cross-entropies of the cosine classifier ``AUX_SCALE x cos(image, head
    rows)`` on normalised image embeddings (B, D) against value indices ``attributes`` (B, A);
    attributes no image in the batch names are skipped."""
    logits = AUX_SCALE * image @ F.normalize(head.weight, dim=-1).t()  # (B, sum n_a)
    groups = logits.float().split([len(v) for v in ATTRIBUTES.values()], dim=1)  # A x (B, n_a)
    named = [(g, attributes[:, a]) for a, g in enumerate(groups) if (attributes[:, a] != IGNORE).any()]
    return sum(F.cross_entropy(g, target, ignore_index=IGNORE) for g, target in named)


def pretraining_loss(
    model,
    pixels: torch.Tensor,
    ids: torch.Tensor,
    attributes: torch.Tensor | None = None,
    head: torch.nn.Linear | None = None,
    aux_weight: float = 0.0,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE; with ``head`` (a bias-free Linear, not saved with the model), plus
    ``aux_weight`` x :func:`attribute_loss`."""
    image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)  # (B, D)
    text = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)  # (B, D)
    logits = model.logit_scale.exp().clamp(max=100) * image @ text.t()  # (B, B)
    target = torch.arange(len(ids))
    loss = (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.t().float(), target)) / 2
    if head is None or not aux_weight:
        return loss
    return loss + aux_weight * attribute_loss(image, attributes, head)


def train(args: argparse.Namespace) -> Path:
    from transformers import AutoTokenizer, CLIPModel

    if args.contrast_groups and args.batch_size % GROUP:
        raise ConfigError(
            f"--batch-size {args.batch_size} splits the contrast groups of {GROUP} pairs; "
            f"use a multiple of {GROUP}."
        )
    if args.init:
        _check_init(Path(args.init))
    torch.set_num_threads(args.threads)
    partial = Path(f"{args.out}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    if args.init:
        for name in TOKENIZER_FILES:
            (partial / name).write_bytes((Path(args.init) / name).read_bytes())
    elif not (partial / "vocab.json").exists():
        write_clip_tokenizer(
            partial, tokenizer_corpus(args.seed, contrast=args.contrast_groups), max_length=CONTEXT
        )
    tokenizer = AutoTokenizer.from_pretrained(partial)
    if args.init:
        model = CLIPModel.from_pretrained(args.init).float()
    else:
        model = build_model(len(tokenizer), args.seed, args.logit_scale)
    unused = [a for a, name in enumerate(ATTRIBUTES) if name not in args.aux_attributes]
    head = torch.nn.Linear(MODEL["projection_dim"], sum(map(len, ATTRIBUTES.values())), bias=False)
    named = [*model.named_parameters(), *(("head." + n, p) for n, p in head.named_parameters())]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    step, history = _resume(partial, model, head, optimizer)
    transform = ImageTransform(shortest_edge=IMAGE_SIZE, crop=(IMAGE_SIZE, IMAGE_SIZE))
    loader = DataLoader(
        Pairs(args.seed, step * args.batch_size, transform, args.contrast_groups),
        batch_size=args.batch_size,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    start = time.perf_counter()
    model.train()
    for pixels, texts, attributes in loader:
        if step >= args.steps:
            break
        ids = tokenizer(
            list(texts), padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt"
        )["input_ids"]
        attributes[:, unused] = IGNORE
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = pretraining_loss(model, pixels, ids, attributes, head, args.aux_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        step += 1
        history.append(round(loss.item(), 4))
        if step % args.log_every == 0:
            rate = args.log_every * args.batch_size / max(time.perf_counter() - start, 1e-9)
            logger.info(
                "step %d/%d loss %.3f scale %.1f (%.0f pairs/s)",
                step,
                args.steps,
                sum(history[-args.log_every :]) / args.log_every,
                model.logit_scale.exp().item(),
                rate,
            )
            start = time.perf_counter()
        if step % args.save_every == 0 or step == args.steps:
            _checkpoint(partial, model, head, optimizer, step, history)
    return _finish(args, partial, model, history)


def _check_init(path: Path) -> None:
    missing = [n for n in ("config.json", *TOKENIZER_FILES) if not (path / n).is_file()]
    if missing:
        raise ConfigError(
            f"--init {path} is not a checkpoint written by this script (missing {', '.join(missing)}); "
            "pass a directory made by `python -m vlpeft.world.pretrain --out DIR`."
        )


def _aux_attributes(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ATTRIBUTES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown attribute(s) {unknown or text!r}; choose from {', '.join(ATTRIBUTES)}"
        )
    return names


def _checkpoint(partial: Path, model, head, optimizer, step: int, history: list[float]) -> None:
    tmp = partial / "state.pt.tmp"
    state = {"model": model.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict()}
    torch.save({**state, "step": step, "history": history}, tmp)
    os.replace(tmp, partial / "state.pt")


def _resume(partial: Path, model, head, optimizer) -> tuple[int, list[float]]:
    path = partial / "state.pt"
    if not path.exists():
        return 0, []
    state = torch.load(path, weights_only=False)
    model.load_state_dict(state["model"])
    head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    logger.info("resuming from step %d", state["step"])
    return state["step"], state["history"]


def _finish(args: argparse.Namespace, partial: Path, model, history: list[float]) -> Path:
    model.eval()
    with atomic_directory(args.out, overwrite=True) as tmp:
        model.to(torch.float16 if args.half else torch.float32).save_pretrained(tmp)
        for name in TOKENIZER_FILES:
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
    parser.add_argument(
        "--logit-scale",
        type=float,
        default=100.0,
        help="initial exp(logit_scale); 100 = CLIP's final, capped value (CLIP starts at 1/0.07)",
    )
    parser.add_argument(
        "--aux-weight",
        type=float,
        default=1.0,
        help="weight of the auxiliary attribute loss on the image embedding (0: contrastive only)",
    )
    parser.add_argument(
        "--aux-attributes",
        type=_aux_attributes,
        default=CLASS_ATTRIBUTES,
        help=f"comma-separated attributes the auxiliary head predicts (of {', '.join(ATTRIBUTES)})",
    )
    parser.add_argument(
        "--init",
        help="continue from this checkpoint (its weights, tokenizer and logit scale; a fresh head and "
        "schedule); pass a new --seed so the pairs differ from its first run",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="bf16",
        help="bf16 autocast (fp32 weights); fast on CPUs with AVX512-BF16/AMX, slow elsewhere",
    )
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
