"""Prompts inside the encoders (VPT, IVLP, MaPLe, PromptSRC) on a tiny CLIP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlpeft.backbones import load_backbone
from vlpeft.methods import Method, get_method, list_methods
from vlpeft.methods.prompts.deep import PixelPromptLearner, text_prompts, vision_prompts
from vlpeft.methods.prompts.promptsrc import gaussian_weights

from conftest import TINY_WORLD_CLASSES, pixel_data, pixels_of

PIXEL_METHODS = [n for n in list_methods() if issubclass(get_method(n), PixelPromptLearner)]
NAMES = list(TINY_WORLD_CLASSES)


@pytest.fixture(scope="module")
def backbone(tiny_clip):
    return load_backbone(str(tiny_clip))


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


def make_method(name: str, backbone, world, **overrides):
    cls = get_method(name)
    fields = cls.config_class.field_names()
    small = {
        k: v
        for k, v in {"depth_text": "2", "depth_vision": "2", "epochs": "2", "gpa_mean": "2"}.items()
        if k in fields
    }
    method = cls(cls.config_class().with_overrides({**small, **overrides}))
    method.bind(backbone)
    return method, pixel_data(backbone, world)


def _spy_layer_inputs(backbone, tower, index, store):
    def hook(module, args, kwargs):
        store.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    return backbone.layers(tower)[index].register_forward_pre_hook(hook, with_kwargs=True)


def test_vision_prompts_are_appended_then_replaced_at_deeper_layers(backbone):
    shallow, deep = torch.randn(3, backbone.vision_width), [torch.randn(3, backbone.vision_width)]
    pixels = torch.randn(2, 3, 32, 32)
    seen0, seen1 = [], []
    with vision_prompts(backbone, shallow, deep):  # spies after the prompt hooks: pre-hooks run in order
        h0, h1 = (
            _spy_layer_inputs(backbone, "vision", 0, seen0),
            _spy_layer_inputs(backbone, "vision", 1, seen1),
        )
        backbone.encode_image(pixels)
    h0.remove(), h1.remove()
    plain = backbone.encode_image_tokens(pixels)
    assert seen0[0].shape[1] == plain.shape[1] + 3  # appended (after the pre-layer-norm of the embeddings)
    torch.testing.assert_close(seen1[0][:, -3:], deep[0].expand(2, -1, -1))  # replaced at layer 1
    assert len(backbone.embeddings("vision")._forward_hooks) == 0  # hooks gone after the block


def test_text_prompts_replace_the_context_positions(backbone):
    from vlpeft.methods.prompts.tokens import PromptTokens

    tokens = PromptTokens(backbone, NAMES, 2)
    deep = [torch.randn(2, backbone.text_width)]
    seen = []
    with text_prompts(backbone, tokens.first_slot, deep):
        handle = _spy_layer_inputs(backbone, "text", 1, seen)
        backbone.encode_text_embeddings(tokens(torch.zeros(2, backbone.text_width)), tokens.eot)
    handle.remove()
    torch.testing.assert_close(seen[0][:, 1:3], deep[0].expand(3, -1, -1))


def test_maple_couples_vision_prompts_to_text_prompts(backbone, world):
    method, data = make_method("maple", backbone, world)
    method.prepare(data)
    shallow, deep = method.vision_prompt_tensors()
    torch.testing.assert_close(shallow, method.proj(method.ctx))
    assert len(deep) == 1
    torch.testing.assert_close(deep[0], method.projections[0](method.text_deep[0]))
    assert method.ctx.shape[0] == 2 and method.tokens.fixed_words == "of a"  # "a photo" learned, "of a" fixed


def test_gaussian_prompt_aggregation_weights_and_average(backbone, world):
    w = gaussian_weights(20, 15, 1)
    assert sum(w) == pytest.approx(1.0) and w[14] == pytest.approx(0.399, abs=1e-3) and w[13] == w[15]
    method, data = make_method("promptsrc", backbone, world, epochs="3", gpa_mean="2", gpa_std="1")
    method.prepare(data)
    snapshots = []
    for epoch in range(3):
        with torch.no_grad():
            method.ctx.fill_(float(epoch + 1))
        snapshots.append(float(epoch + 1))
        method.on_epoch_end(epoch)
    method.on_fit_end()
    weights = gaussian_weights(3, 2, 1)
    expected = sum(wt * v for wt, v in zip(weights, snapshots, strict=True))
    assert method.ctx[0, 0].item() == pytest.approx(expected)


def test_promptsrc_regularisers_are_zero_at_frozen_clip(backbone, world):
    method, data = make_method("promptsrc", backbone, world, depth_text="1", depth_vision="0", n_ctx_text="4")
    method.prepare(data)
    pixels = pixels_of(backbone, world.train[:3])
    image = method.image_features(pixels)
    frozen = F.normalize(backbone.encode_image(pixels), dim=-1)
    torch.testing.assert_close(image, frozen)  # no visual prompts: the frozen image path
    assert F.l1_loss(method.text_features(), method.frozen_text).item() > 0  # 60 templates differ from one


@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_pixel_matrix(name, backbone, world, tmp_path):
    torch.manual_seed(0)
    method, data = make_method(name, backbone, world)
    method.prepare(data)
    pixels, labels = pixels_of(backbone, world.train), torch.tensor([d.label for d in world.train])
    own = {id(p) for p in method.parameters()}
    assert method.trainable_parameters() and all(id(p) in own for p in method.trainable_parameters())
    assert not any(p.requires_grad for p in backbone.parameters())
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    before = method.loss(pixels, labels).item()
    for _ in range(10):
        optimizer.zero_grad()
        method.backward(pixels, labels)
        optimizer.step()
    assert method.loss(pixels, labels).item() < before
    method.eval()
    test = pixels_of(backbone, world.test)
    with torch.no_grad():
        logits = method.logits(test)
    assert logits.shape == (len(world.test), 3)
    meta = {
        "text_width": backbone.text_width,
        "vision_width": backbone.vision_width,
        "embed_dim": backbone.embed_dim,
    }
    method.save_adapter(tmp_path, meta)
    loaded = Method.from_saved(tmp_path)
    loaded.attach(backbone, world.classnames)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(test), logits, atol=1e-5, rtol=1e-5)
    loaded.attach(backbone, ["heart", "moon"])  # new classes
    with torch.no_grad():
        assert loaded.logits(test).shape == (len(world.test), 2)


def test_train_and_base_to_new_run(backbone, world, tmp_path, tiny_clip):
    from vlpeft.engine.runner import TrainConfig, evaluate_run, run_train

    cfg = TrainConfig(
        "maple",
        str(tiny_clip),
        "WorldShapes",
        str(world.root).rsplit("/", 1)[0],
        shots=2,
        subsample="base",
        cache_dir=str(tmp_path / "c"),
        overrides={"epochs": "1", "depth_text": "2", "depth_vision": "2"},
    )
    result = run_train(cfg, tmp_path / "run")
    trained_and_tested = 2 * 2 + 2 * 2  # 2 base classes x (2 shots, 1 epoch + 2 test images), prompted
    assert (
        result["image_encoder_forwards"] == trained_and_tested and 0 <= result["metrics"]["accuracy"] <= 100
    )
    new = evaluate_run(tmp_path / "run", subsample="new", cache_dir=str(tmp_path / "c"))
    assert new["base_to_new"]["harmonic_mean"] == pytest.approx(
        2
        * new["base_to_new"]["base"]
        * new["base_to_new"]["new"]
        / max(new["base_to_new"]["base"] + new["base_to_new"]["new"], 1e-9)
    )
    assert math.isfinite(new["metrics"]["accuracy"])


def test_plotpp_with_one_prompt_each_is_the_prompted_cosine_and_the_vision_stage_adds_the_global_logits(
    backbone, world
):
    import dataclasses

    method, data = make_method(
        "plot++", backbone, world, n_prompts="1", n_vision_prompts="1", ctx_init="false"
    )
    method.prepare(data)
    pixels = pixels_of(backbone, world.test)
    with torch.no_grad():
        image = F.normalize(method.raw_image_features(pixels)[0], dim=-1)  # the one prompted CLS feature
        text = F.normalize(method.raw_text_features()[0], dim=-1)
        cosine = method.logit_scale * image @ text.t()
        torch.testing.assert_close(method.logits(pixels), cosine)  # a 1 x 1 plan is 1
        method.config = dataclasses.replace(method.config, stages=("vision",))
        torch.testing.assert_close(method.logits(pixels), 2 * cosine)  # OT + the global logits


def test_plotpp_prompts_slice_the_phrase_tokens_as_the_code(backbone, world):
    """k = the word count of the dataset's first phrase; prompt i's context starts as tokens 1..k of
    "SOS <phrase i> EOT 0 ..." and the fixed rest is "SOS <phrase i> <class>. EOT 0 ..."[1 + k:], so a
    phrase of other length keeps or loses tokens exactly as the code's ``embedding[:, 1 + n_ctx:]``."""
    from vlpeft.methods.prompts.plotpp import PLOTPP_TEMPLATES

    method, data = make_method("plot++", backbone, world)
    data.dataset = "ImageNet"
    method.prepare(data)
    tok, k = backbone.tokenizer, len(PLOTPP_TEMPLATES["ImageNet"][0].split())

    def ids(text: str) -> list[int]:
        row = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        return row + [0] * (backbone.context_length - len(row))

    embed = backbone.token_embedding
    with torch.no_grad():
        for i, phrase in enumerate(PLOTPP_TEMPLATES["ImageNet"]):
            torch.testing.assert_close(method.ctx[i], embed(torch.tensor(ids(phrase)[1 : 1 + k])).float())
            row = i * len(world.classnames) + 1  # prompt i, class 1 (prompt-major)
            full = ids(f"{phrase} {world.classnames[1]}.")
            assert int(method.eot[row]) == full.index(tok.eos_token_id)
            torch.testing.assert_close(method.token_suffix[row], embed(torch.tensor(full[1 + k :])).float())


def test_plotpp_trains_the_vision_prompts_then_both(backbone, world):
    torch.manual_seed(0)
    vision_only, data = make_method("plot++", backbone, world, epochs="1", stages="vision")
    report = vision_only.fit(data)
    init, _ = make_method("plot++", backbone, world)
    init.prepare(data)
    torch.testing.assert_close(vision_only.ctx, init.ctx)  # text prompts fixed in the vision stage
    assert not torch.allclose(vision_only.ctx_vision, init.ctx_vision) and list(report["stages"]) == [
        "vision"
    ]
    both, _ = make_method("plot++", backbone, world, epochs="1")
    report = both.fit(data)
    assert list(report["stages"]) == ["vision", "joint"] and not torch.allclose(both.ctx, init.ctx)
    assert (
        both.stage == "joint"
        and both.num_trainable_parameters() == both.ctx.numel() + both.ctx_vision.numel()
    )


def test_a_prompt_depth_beyond_the_backbone_names_the_setting_and_its_maximum(backbone, world):
    from vlpeft.errors import ConfigError

    layers = len(backbone.layers("text"))
    with pytest.raises(
        ConfigError, match=rf"depth_text={layers + 5} .* use --set depth_text={layers} or less"
    ):
        make_method("maple", backbone, world, depth_text=str(layers + 5))
