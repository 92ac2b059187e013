"""Prompt-learner speed and memory on the ViT-B/16 text-tower architecture (random weights).

Measures, on this machine's CPU:
1. a CoOp training step (100 classes, 16 context tokens, batch 32 of cached image features)
   with the text encoder run over the full 77-token context vs only up to the longest
   prompt's EOT token (exact: causal attention);
2. a CoCoOp training step (8 images x 100 classes) with all prompts in one text-encoder call
   vs the official per-image loop.
Each variant runs in a fresh subprocess so that its peak memory (max RSS) is its own.

Usage: ``python benchmarks/prompt_learners.py [--steps 3] [--classes 100]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("coop-full", "coop-truncated", "cocoop-loop", "cocoop-batched")


def build_backbone(directory: Path):
    """A CLIP with ViT-B/16's text tower (width 512, 12 layers, 8 heads) and a tiny vision tower."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from vlpeft.backbones import init_tiny, load_backbone
    from vlpeft.backbones.tiny import TinySize

    if not (directory / "config.json").exists():
        init_tiny(directory, size=TinySize(width=64, embed_dim=512))
        config = json.loads((directory / "config.json").read_text())
        text = dict(
            config["text_config"],
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
        )
        torch.manual_seed(0)
        model = CLIPModel(
            CLIPConfig(text_config=text, vision_config=config["vision_config"], projection_dim=512)
        )
        model.save_pretrained(directory)
    return load_backbone(str(directory))


def class_names(n: int) -> list[str]:
    words = ["red", "blue", "green", "small", "large", "striped", "dotted", "shaded", "wooden", "glass"]
    nouns = ["circle", "square", "triangle", "star", "heart", "ring", "arrow", "moon", "cross", "diamond"]
    return [f"{words[i % 10]} {nouns[(i // 10) % 10]}" for i in range(n)]


def run_variant(variant: str, directory: Path, steps: int, classes: int) -> dict:
    import torch
    import torch.nn.functional as F

    from vlpeft.methods.prompts.tokens import PromptTokens

    torch.set_num_threads(2)
    backbone = build_backbone(directory)
    names = class_names(classes)
    n_ctx = 16 if variant.startswith("coop") else 4
    tokens = PromptTokens(backbone, names, n_ctx)
    ctx = torch.nn.Parameter(torch.randn(n_ctx, backbone.text_width) * 0.02)
    meta = torch.nn.Linear(backbone.embed_dim, backbone.text_width)
    params = [ctx, *meta.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.002)
    batch = 32 if variant.startswith("coop") else 8
    images = F.normalize(torch.randn(batch, backbone.embed_dim), dim=-1)
    labels = torch.randint(classes, (batch,))

    def step() -> None:
        optimizer.zero_grad()
        if variant.startswith("coop"):
            text = backbone.encode_text_embeddings(
                tokens(ctx), tokens.eot, truncate=variant == "coop-truncated"
            )
            logits = 100 * images @ F.normalize(text, dim=-1).t()
        elif variant == "cocoop-batched":
            shifted = ctx[None] + meta(images)[:, None]
            embeds = tokens(shifted, per_image=True).flatten(0, 1)
            text = backbone.encode_text_embeddings(embeds, tokens.eot.repeat(batch)).view(batch, classes, -1)
            logits = 100 * torch.einsum("bd,bcd->bc", images, F.normalize(text, dim=-1))
        else:  # the official loop: one text-encoder call per image
            rows = []
            for b in range(batch):
                text = backbone.encode_text_embeddings(tokens(ctx + meta(images[b])), tokens.eot)
                rows.append(100 * images[b] @ F.normalize(text, dim=-1).t())
            logits = torch.stack(rows)
        F.cross_entropy(logits, labels).backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": variant,
        "step_s": seconds,
        "peak_rss_mb": peak_mb,
        "max_eot": int(tokens.eot.max()) + 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, Path(args.dir), args.steps, args.classes)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        build_backbone(Path(tmp) / "vitb16-text")
        results = {}
        for variant in VARIANTS:
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--dir",
                str(Path(tmp) / "vitb16-text"),
                "--steps",
                str(args.steps),
                "--classes",
                str(args.classes),
            ]
            out = (
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            results[variant] = json.loads(out)
            r = results[variant]
            print(
                f"  {variant:15s} {r['step_s']:7.3f} s/step  peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True
            )
    full, trunc = results["coop-full"], results["coop-truncated"]
    loop, batched = results["cocoop-loop"], results["cocoop-batched"]
    print(f"\nViT-B/16 text tower, {args.classes} classes, CPU ({args.steps} steps after a warm-up):")
    print("| measurement | baseline | ours | ratio |\n|---|---:|---:|---:|")
    print(
        f"| CoOp step, 77 tokens vs up to EOT ({trunc['max_eot']}) | {full['step_s']:.3f} s | "
        f"{trunc['step_s']:.3f} s | {full['step_s'] / trunc['step_s']:.2f}x faster |"
    )
    print(
        f"| CoOp peak RSS | {full['peak_rss_mb']:.0f} MB | {trunc['peak_rss_mb']:.0f} MB | "
        f"{full['peak_rss_mb'] / trunc['peak_rss_mb']:.2f}x less |"
    )
    print(
        f"| CoCoOp step (8 images), per-image loop vs batched | {loop['step_s']:.3f} s | "
        f"{batched['step_s']:.3f} s | {loop['step_s'] / batched['step_s']:.2f}x faster |"
    )
    print(
        f"| CoCoOp peak RSS | {loop['peak_rss_mb']:.0f} MB | {batched['peak_rss_mb']:.0f} MB | "
        f"{loop['peak_rss_mb'] / batched['peak_rss_mb']:.2f}x |"
    )


if __name__ == "__main__":
    main()
