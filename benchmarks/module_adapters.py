"""Module-adapter cost on the CLIP ViT-B/16 architecture (random weights): parameters, step time, memory.

For every registered module adapter (LoRA, DoRA, BitFit, LN-tuning, SSF, AdaptFormer, full FT,
WiSE-FT, FLYP) with its default config: trainable parameters, the time of one training step
(forward, backward, optimiser) at batch 8 of 224 px images with 10 class prompts, and the peak
memory of the process (max RSS on CPU; peak allocated on CUDA). Each method runs in a fresh
subprocess so that its peak memory is its own. Ratios are against full fine-tuning.

Usage: ``python benchmarks/module_adapters.py [--steps 2] [--batch 8] [--device cpu|cuda]``
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

CLASSES = [f"{c} {s}" for c in ("red", "blue") for s in ("circle", "square", "star", "ring", "moon")]


def build_backbone(directory: Path) -> None:
    """Save a randomly initialised CLIP ViT-B/16 (text 512 x 12, vision 768 x 12, patch 16, 224 px)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from vlpeft.backbones import init_tiny

    init_tiny(directory)
    config = json.loads((directory / "config.json").read_text())
    text = dict(config["text_config"], hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8)  # fmt: skip
    vision = dict(config["vision_config"], hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, image_size=224, patch_size=16)  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)).save_pretrained(
        directory
    )


def run_method(name: str, directory: Path, steps: int, batch: int, device: str) -> dict:
    import torch

    from vlpeft.backbones import load_backbone
    from vlpeft.methods import ClassText, get_method
    from vlpeft.methods.inputs import PixelData

    torch.manual_seed(0)
    backbone = load_backbone(f"local:{directory}", device=device)
    cls = get_method(name)
    method = cls()
    method.bind(backbone)
    text = ClassText(
        CLASSES, lambda kind: ["a photo of a {}."], lambda p: backbone.encode_text(backbone.tokenize(p))
    )
    method.prepare(PixelData((), (), text, len(CLASSES), float(backbone.logit_scale), seed=1, shots=16))
    method.train()
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-5)
    size = backbone.model.config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, device=device)
    labels = torch.arange(batch) % len(CLASSES)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        method.backward(pixels, labels)
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "method": name,
        "trainable": method.num_trainable_parameters(),
        "step_s": seconds,
        "peak_mb": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_method(args.method, Path(args.dir), args.steps, args.batch, args.device)))
        return
    from vlpeft.methods import ModuleAdapter, get_method, list_methods

    names = args.methods.split(",") if args.methods else [
        n for n in list_methods() if issubclass(get_method(n), ModuleAdapter)
    ]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build_backbone(Path(tmp) / "vitb16")
        for name in names:
            cmd = [sys.executable, __file__, "--method", name, "--dir", str(Path(tmp) / "vitb16"),
                   "--steps", str(args.steps), "--batch", str(args.batch),
                   "--device", args.device]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"  {name}: failed\n{done.stderr[-2000:]}", flush=True)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"  {name:12s} {r['trainable']:>12,d} params "
                f"{r['step_s']:7.2f} s/step {r['peak_mb']:8.0f} MB",
                flush=True,
            )
    full = next((r for r in rows if r["method"] == "full-ft"), rows[0])
    memory = "peak allocated (CUDA)" if args.device.startswith("cuda") else "peak RSS"
    print(f"\nCLIP ViT-B/16 (random weights), batch {args.batch}, {len(CLASSES)} classes, {args.device}:")
    print(f"| method | trainable params | step | vs full-ft | {memory} | vs full-ft |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['trainable']:,} | {r['step_s']:.2f} s | "
            f"{r['step_s'] / full['step_s']:.2f}x | "
            f"{r['peak_mb']:.0f} MB | {r['peak_mb'] / full['peak_mb']:.2f}x |"
        )


if __name__ == "__main__":
    main()
