"""Module adapters (LoRA, DoRA, BitFit, LN, SSF, AdaptFormer, full FT, WiSE-FT, FLYP) on a tiny CLIP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlpeft.backbones import load_backbone
from vlpeft.methods import Method, ModuleAdapter, get_method, list_methods

from conftest import TINY_WORLD_CLASSES, pixel_data, pixels_of

ADAPTERS = [n for n in list_methods() if issubclass(get_method(n), ModuleAdapter)]
NAMES = list(TINY_WORLD_CLASSES)


@pytest.fixture(scope="module")
def backbone(tiny_clip):
    return load_backbone(str(tiny_clip))


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


def make_method(name: str, backbone, world, seed: int = 0, **overrides):
    cls = get_method(name)
    fields = cls.config_class.field_names()
    settings = {"epochs": "2", "iters_per_shot": "0", **overrides}
    method = cls(cls.config_class().with_overrides({k: v for k, v in settings.items() if k in fields}))
    method.bind(backbone)
    return method, pixel_data(backbone, world, seed)


def zero_shot_logits(backbone, pixels, classnames):
    with torch.no_grad():
        image = F.normalize(backbone.encode_image(pixels), dim=-1)
        text = F.normalize(
            backbone.encode_text(backbone.tokenize([f"a photo of a {c}." for c in classnames])), dim=-1
        )
    return backbone.logit_scale * image @ text.t()


@pytest.mark.parametrize("name", ADAPTERS)
def test_module_adapter_matrix(name, backbone, world, tmp_path):
    torch.manual_seed(0)
    method, data = make_method(name, backbone, world, dropout="0")
    before_weights = {k: v.clone() for k, v in backbone.state_dict().items()}
    method.prepare(data)
    pixels, labels = pixels_of(backbone, world.train), torch.tensor([d.label for d in world.train])
    own = {id(p) for p in method.parameters()}
    trainable = method.trainable_parameters()
    assert trainable and all(id(p) in own for p in trainable)
    assert not any(p.requires_grad for p in backbone.parameters())
    if method.identity_at_init:
        with torch.no_grad():
            torch.testing.assert_close(
                method.logits(pixels), zero_shot_logits(backbone, pixels, NAMES), atol=1e-4, rtol=1e-4
            )
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    before = method.loss(pixels, labels).item()
    for _ in range(8):
        optimizer.zero_grad()
        method.backward(pixels, labels)
        optimizer.step()
    assert method.loss(pixels, labels).item() < before
    for key, value in backbone.state_dict().items():  # the caller's backbone is never changed
        assert torch.equal(value, before_weights[key]), key
    method.eval()
    test = pixels_of(backbone, world.test)
    with torch.no_grad():
        logits = method.logits(test)
    assert logits.shape == (len(world.test), 3)
    meta = {"num_classes": 3, "embed_dim": backbone.embed_dim}
    method.save_adapter(tmp_path, meta)
    saved = sum(
        t.numel()
        for t in __import__("safetensors.torch").torch.load_file(tmp_path / "adapter.safetensors").values()
    )
    assert saved <= method.num_trainable_parameters() + 64  # only what was learned (+ tiny buffers)
    loaded = Method.from_saved(tmp_path)
    loaded.attach(backbone, world.classnames)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(test), logits, atol=1e-5, rtol=1e-5)
    if loaded.transfers_to_new_classes:
        loaded.attach(backbone, ["heart", "moon"])
        with torch.no_grad():
            assert loaded.logits(test).shape == (len(world.test), 2)


def test_lora_with_b_zero_is_the_base_model_and_uses_rslora_scaling(backbone, world):
    method, data = make_method("lora", backbone, world)
    method.prepare(data)
    layers = list(method.lora_layers())
    assert len(layers) == 3 * (len(backbone.layers("vision")) + len(backbone.layers("text")))
    q = layers[0]
    assert q.scaling["default"] == pytest.approx(1 / 2**0.5)  # CLIP-LoRA: alpha / sqrt(r), alpha=1, r=2
    assert torch.count_nonzero(q.lora_B["default"].weight) == 0
    method.eval()
    pixels = pixels_of(backbone, world.test)
    with torch.no_grad():
        torch.testing.assert_close(method.logits(pixels), zero_shot_logits(backbone, pixels, NAMES))
    # A hand-computed LoRA output: W x + b + s * B A x.
    with torch.no_grad():
        q.lora_B["default"].weight.normal_()
        x = torch.randn(2, 5, q.in_features)
        base = q.get_base_layer()
        expected = (
            base(x)
            + q.scaling["default"] * x @ q.lora_A["default"].weight.t() @ q.lora_B["default"].weight.t()
        )
        torch.testing.assert_close(q(x), expected, atol=1e-5, rtol=1e-5)


def test_lora_merge_then_unmerge_restores_weights(backbone, world):
    method, data = make_method("lora", backbone, world)
    method.prepare(data)
    layer = next(iter(method.lora_layers()))
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    weight = layer.get_base_layer().weight.detach().clone()
    pixels = pixels_of(backbone, world.test)
    method.eval()
    with torch.no_grad():
        unmerged = method.logits(pixels)
        method.merge()
        assert not torch.equal(layer.get_base_layer().weight, weight)
        torch.testing.assert_close(method.logits(pixels), unmerged, atol=1e-5, rtol=1e-5)
        method.unmerge()
    torch.testing.assert_close(layer.get_base_layer().weight, weight, atol=1e-6, rtol=0)


def test_lora_blocks_matrices_and_towers_are_configurable(backbone, world):
    method, data = make_method("lora", backbone, world, towers="vision", matrices="q,o", blocks="0", r="4")
    method.prepare(data)
    names = [n for n, p in method.backbone.named_parameters() if p.requires_grad]
    assert names and all("vision_model.encoder.layers.0.self_attn." in n for n in names)
    assert {n.split("self_attn.")[1].split(".")[0] for n in names} == {"q_proj", "out_proj"}
    with pytest.raises(Exception, match="blocks"):
        make_method("lora", backbone, world, blocks="7,99")[0].prepare(data)


def test_bitfit_and_ln_tuning_select_exactly_their_parameters(backbone, world):
    bitfit, data = make_method("bitfit", backbone, world)
    bitfit.prepare(data)
    names = [n for n, p in bitfit.backbone.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(".bias") for n in names)
    assert sum(p.numel() for p in bitfit.trainable_parameters()) == sum(
        p.numel() for n, p in backbone.named_parameters() if n.endswith(".bias")
    )
    ln, data = make_method("ln-tuning", backbone, world)
    ln.prepare(data)
    names = [n for n, p in ln.backbone.named_parameters() if p.requires_grad]
    assert names and all(("layer_norm" in n or "layernorm" in n or "layrnorm" in n) for n in names)
    assert any("post_layernorm" in n for n in names) and any("pre_layrnorm" in n for n in names)


def test_ssf_scales_and_shifts_then_folds_into_the_weights(backbone, world):
    from vlpeft.methods.adapters.ssf import ScaleShift

    op = ScaleShift(4)
    with torch.no_grad():
        op.scale.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]))
        op.shift.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(op(torch.ones(2, 4)), torch.tensor([[1.0, 3.0, 1.0, 3.5]] * 2))
    method, data = make_method("ssf", backbone, world)
    method.prepare(data)
    assert (
        len(method.ssf) == 2 + 8 * len(backbone.layers("vision")) + 1
    )  # patch, pre-LN, 8 per block, post-LN
    with torch.no_grad():
        for p in method.ssf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    method.eval()
    pixels = pixels_of(backbone, world.test)
    merged = method.merged_model()
    with torch.no_grad():
        expected = method.image_features(pixels)
        plain = F.normalize(merged.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=1e-4)


def test_adaptformer_adds_the_scaled_bottleneck_beside_the_mlp(backbone, world):
    method, data = make_method("adaptformer", backbone, world, bottleneck="4", dropout="0")
    method.prepare(data)
    adapter = method.adapters["vision_0"]
    assert adapter.down.out_features == 4 and torch.count_nonzero(adapter.up.weight) == 0
    with torch.no_grad():
        adapter.up.weight.normal_()
    block = method.backbone.layers("vision")[0]
    x = torch.randn(2, 5, backbone.vision_width)
    with torch.no_grad():
        attn = block.self_attn(block.layer_norm1(x), attention_mask=None)[0]
        xp = x + attn
        ln, mlp = block.layer_norm2, block.mlp  # called through their parts: no hooks fire
        h = F.layer_norm(xp, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        expected = (
            xp + mlp.fc2(mlp.activation_fn(mlp.fc1(h))) + 0.1 * adapter.up(torch.relu(adapter.down(xp)))
        )
        torch.testing.assert_close(block(x, attention_mask=None), expected, atol=1e-5, rtol=1e-5)


def test_wise_ft_interpolates_between_zero_shot_and_fine_tuned(backbone, world):
    from vlpeft.training.loop import train_on_pixels

    method, data = make_method("wise-ft", backbone, world, lr="1e-3", aug_scale="0.9,1.0")
    method.prepare(data)
    train_on_pixels(method, data, method.config)
    pixels = pixels_of(backbone, world.test)
    with torch.no_grad():
        method.mix(0.0)
        torch.testing.assert_close(
            method.logits(pixels), zero_shot_logits(backbone, pixels, NAMES), atol=1e-4, rtol=1e-4
        )
        method.mix(1.0)
        fine_tuned = method.logits(pixels)
        assert not torch.allclose(fine_tuned, zero_shot_logits(backbone, pixels, NAMES), atol=1e-3)
        method.mix(0.5)
        half = {n: p.clone() for n, p in method.named_parameters() if p.requires_grad}
    for name, value in half.items():
        torch.testing.assert_close(value, (method._zero_shot[name] + method._fine_tuned[name]) / 2)


def test_flyp_loss_is_clip_contrastive_on_class_captions(backbone, world):
    method, data = make_method("flyp", backbone, world)
    method.prepare(data)
    pixels, labels = pixels_of(backbone, world.train[:4]), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        loss = method.loss(pixels, labels)
        image = F.normalize(backbone.encode_image(pixels), dim=-1)
        text = F.normalize(
            backbone.encode_text(backbone.tokenize([f"a photo of a {NAMES[y]}." for y in labels])), dim=-1
        )
        logits = backbone.logit_scale * image @ text.t()
        target = torch.arange(4)
        expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert any("logit_scale" in n for n, p in method.backbone.named_parameters() if p.requires_grad)


def test_gradient_accumulation_gives_the_same_step(backbone, world):
    from vlpeft.training.loop import train_on_pixels

    results = []
    for accumulate in ("1", "3"):
        torch.manual_seed(0)
        method, data = make_method(
            "lora", backbone, world, dropout="0", accumulate=accumulate, batch_size="6"
        )
        method.prepare(data)
        train_on_pixels(method, data, method.config)
        results.append({n: p.detach().clone() for n, p in method.named_parameters() if p.requires_grad})
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=1e-5, rtol=1e-4)


def test_precision_and_steps_follow_the_config(backbone, world):
    from vlpeft.training.loop import train_on_pixels

    method, data = make_method("bitfit", backbone, world, precision="bf16", batch_size="4")
    method.prepare(data)
    report = train_on_pixels(method, data, method.config, max_steps=5)
    assert report["steps"] == 5 and report["epochs"] == 2  # ceil(9 / 4) = 3 batches an epoch
    with pytest.raises(Exception, match="fp16 needs a CUDA"):
        make_method("bitfit", backbone, world, precision="fp16")[0].fit(data)
    assert get_method("lora").config_class().iters_per_shot == 500


@pytest.mark.parametrize(
    ("method", "settings", "merge"),
    [
        ("lora", ["r=2", "iters_per_shot=2"], True),
        ("bitfit", ["iters_per_shot=2", "lr=0.01"], False),
        ("coop", ["epochs=2"], False),
    ],
)
def test_export_loads_in_plain_transformers_with_the_same_predictions(
    method, settings, merge, tiny_clip, shapes_folder, tmp_path
):
    from vlpeft.engine.runner import TrainConfig, load_run, run_train
    from vlpeft.export import export_run, exported_logits

    overrides = dict(s.split("=") for s in settings)
    cfg = TrainConfig(method, str(tiny_clip), "imagefolder", str(shapes_folder), shots=2, overrides=overrides,
                      cache_dir=str(tmp_path / "cache"), device="cpu")  # fmt: skip
    run_train(cfg, tmp_path / "run")
    if merge:
        with pytest.raises(Exception, match="--merge"):
            export_run(tmp_path / "run", tmp_path / "unmerged")
        assert not (tmp_path / "unmerged").exists()
    export_run(tmp_path / "run", tmp_path / "export", merge=merge)
    backbone, trained, classnames = load_run(tmp_path / "run")
    images = sorted(shapes_folder.glob("*/*.png"))[::5]
    from PIL import Image

    pixels = torch.stack([backbone.preprocess(Image.open(p)) for p in images])
    with torch.no_grad():
        if method == "coop":
            ours = trained.logits(backbone.encode_image(pixels))
        else:
            ours = trained.logits(pixels)
    plain = exported_logits(tmp_path / "export", pixels)
    torch.testing.assert_close(plain, ours.float(), atol=1e-4, rtol=1e-4)
    assert (plain.argmax(1) == ours.argmax(1)).all()
    names = __import__("json").loads((tmp_path / "export" / "class_head.json").read_text())["classnames"]
    assert names == classnames
    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(str(tmp_path / "export")) is not None  # tokenizer + processor load


def test_export_refuses_methods_that_need_vlpeft(backbone, world, tmp_path):
    method, data = make_method("adaptformer", backbone, world)
    method.prepare(data)
    with pytest.raises(Exception, match="cannot be exported"):
        method.export_parts(merge=True)


def test_two_process_run_equals_one_process_with_the_same_global_batch(tiny_clip, shapes_folder, tmp_path):
    """`torchrun --nproc_per_node 2 -m vlpeft train ...` (gloo on CPU) learns what one process learns."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    def train(out, launcher):
        cmd = [*launcher, "-m", "vlpeft", "train", "--method", "lora", "--model", str(tiny_clip),
               "--dataset", "imagefolder", "--root", str(shapes_folder), "--shots", "2", "--device", "cpu",
               "--cache-dir", str(tmp_path / f"cache-{out}"), "--out", str(tmp_path / out),
               "--set", "dropout=0", "--set", "iters_per_shot=2",
               "--set", "batch_size=4", "--set", "lr=0.01"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("image-encoder forwards:") == 1  # only the first process reports
        return load_file(str(tmp_path / out / "adapter.safetensors"))

    single = train("one", [sys.executable])
    double = train(
        "two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    )
    processes = [json.loads((tmp_path / o / "result.json").read_text())["processes"] for o in ("one", "two")]
    assert processes == [1, 2]
    assert single.keys() == double.keys() and any(
        torch.count_nonzero(v) for k, v in single.items() if "lora_B" in k
    )
    for key in single:
        torch.testing.assert_close(double[key], single[key], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients(backbone, world):
    grads = []
    for checkpointing in ("false", "true"):
        method, data = make_method("lora", backbone, world, dropout="0", grad_checkpointing=checkpointing)
        method.prepare(data)
        method.train()
        pixels, labels = pixels_of(backbone, world.train), torch.tensor([d.label for d in world.train])
        torch.manual_seed(0)
        with torch.no_grad():
            for layer in method.lora_layers():
                layer.lora_B["default"].weight.normal_(std=0.1)
        method.backward(pixels, labels)
        grads.append([p.grad.clone() for p in method.trainable_parameters()])
        active = any(getattr(m, "gradient_checkpointing", False) for m in method.backbone.model.modules())
        assert active == (checkpointing == "true")
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)


def test_loading_factors_refreshes_the_cached_text_features_and_refuses_wrong_shapes(backbone, world):
    from vlpeft.errors import ConfigError

    method, data = make_method("lora", backbone, world, dropout="0", towers="text")
    method.prepare(data)
    method.eval()
    with torch.no_grad():
        before = method.text_features().clone()  # cached (frozen under no_grad)
    state = {k: (v + 0.5 if "lora_B" in k else v) for k, v in method.adapter_state().items()}
    method.load_adapter_state(state)
    with torch.no_grad():
        after = method.text_features()
    assert not torch.allclose(before, after)  # the new factors' text features, not the stale cache
    name = next(k for k in state if "lora_A" in k)
    with pytest.raises(ConfigError, match="has shape"):
        method.load_adapter_state({name: torch.zeros(state[name].shape[0] + 1, state[name].shape[1])})


def test_logit_scale_is_the_checkpoints_or_a_fixed_number_as_clip_lora(backbone, world):
    from vlpeft.errors import ConfigError

    pixels = pixels_of(backbone, world.test)
    learned, data = make_method("lora", backbone, world, dropout="0")
    fixed, _ = make_method("lora", backbone, world, dropout="0", logit_scale="100")
    torch.manual_seed(0)
    learned.prepare(data)
    torch.manual_seed(0)
    fixed.prepare(data)
    learned.eval(), fixed.eval()
    with torch.no_grad():
        ratio = fixed.logits(pixels) / learned.logits(pixels)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 100 / float(backbone.logit_scale)))
    weight, _ = fixed.class_head()
    torch.testing.assert_close(weight.norm(dim=-1), torch.full((len(NAMES),), 100.0))  # exported head too
    with pytest.raises(ConfigError, match="logit_scale"):
        make_method("lora", backbone, world, logit_scale="learned")
