"""The backbone interface on tiny CLIP and SigLIP checkpoints (and the real CLIP tokenizer)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from vlpeft.backbones import init_tiny, load_backbone
from vlpeft.errors import BackboneError, ConfigError

from conftest import shared_path

TEXTS = ["a photo of a cat.", "a photo of the large striped zebra on a road", "x"]


@pytest.fixture
def backbone(tiny_dir):
    return load_backbone(f"local:{tiny_dir}")


def test_text_embeddings_path_equals_transformers(backbone):
    ids = backbone.tokenize(TEXTS)
    assert ids.shape == (3, backbone.context_length)
    ours = backbone.encode_text_embeddings(backbone.token_embedding(ids), backbone.eot_index(ids))
    reference = backbone.model.get_text_features(input_ids=ids).pooler_output
    assert ours.shape == (3, backbone.embed_dim)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(backbone.encode_text(ids), reference, atol=1e-5, rtol=1e-5)


def test_truncation_after_eot_is_exact(tiny_clip):
    backbone = load_backbone(str(tiny_clip))
    ids = backbone.tokenize(TEXTS)
    embeds, eot = backbone.token_embedding(ids), backbone.eot_index(ids)
    assert int(eot.max()) + 1 < backbone.context_length  # truncation really shortens the sequence
    full = backbone.encode_text_embeddings(embeds, eot, truncate=False)
    torch.testing.assert_close(backbone.encode_text_embeddings(embeds, eot), full, atol=1e-5, rtol=1e-5)


def test_image_encoders(backbone):
    pixels = torch.randn(2, 3, *backbone.preprocess.output_size)
    feats = backbone.encode_image(pixels)
    torch.testing.assert_close(feats, backbone.model.get_image_features(pixel_values=pixels).pooler_output)
    tokens = backbone.encode_image_tokens(pixels)
    assert (
        feats.shape == (2, backbone.embed_dim)
        and tokens.shape[0] == 2
        and tokens.shape[2] == backbone.embed_dim
    )
    if backbone.family == "clip":
        torch.testing.assert_close(tokens[:, 0], feats)  # CLS token = the global feature


def test_frozen_and_heads(backbone):
    assert not any(p.requires_grad for p in backbone.parameters())
    assert backbone.logit_scale.shape == () and backbone.logit_scale > 0
    if backbone.family == "clip":
        assert float(backbone.logit_bias) == 0.0


def test_layer_hooks_change_and_restore_outputs(backbone):
    ids = backbone.tokenize(TEXTS[:2])
    pixels = torch.randn(2, 3, *backbone.preprocess.output_size)
    text0, image0 = backbone.encode_text(ids), backbone.encode_image(pixels)
    handle = backbone.add_layer_input_hook("text", 1, lambda h: h)
    torch.testing.assert_close(backbone.encode_text(ids), text0)
    handle.remove()
    handles = [backbone.add_layer_input_hook(t, -1, lambda h: h * 0.5) for t in ("text", "vision")]
    assert not torch.allclose(backbone.encode_text(ids), text0)
    assert not torch.allclose(backbone.encode_image(pixels), image0)
    for h in handles:
        h.remove()
    torch.testing.assert_close(backbone.encode_image(pixels), image0)
    with pytest.raises(ConfigError, match="out of range"):
        backbone.add_layer_input_hook("vision", 99, lambda h: h)


def test_embedding_hook_can_append_prompt_tokens(tiny_clip):
    backbone = load_backbone(str(tiny_clip))
    pixels = torch.randn(2, 3, 32, 32)
    base = backbone.encode_image_tokens(pixels)
    prompts = torch.randn(1, 3, backbone.vision_width)
    handle = backbone.add_embedding_hook(
        "vision", lambda x: torch.cat([x, prompts.expand(len(x), -1, -1)], dim=1)
    )
    tokens = backbone.encode_image_tokens(pixels)
    handle.remove()
    assert tokens.shape[1] == base.shape[1] + 3


def test_fingerprint_identifies_weights(tmp_path, tiny_clip):
    a, b = load_backbone(str(tiny_clip)), load_backbone(str(tiny_clip))
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    other = load_backbone(str(init_tiny(tmp_path / "seed1", seed=1)))
    assert other.fingerprint() != a.fingerprint()


def test_init_tiny_is_deterministic(tmp_path, tiny_clip):
    again = load_backbone(str(init_tiny(tmp_path / "again", seed=0)))
    assert again.fingerprint() == load_backbone(str(tiny_clip)).fingerprint()


def test_init_tiny_refuses_nonempty_dir_and_unknown_family(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        init_tiny(tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="Unknown model family 'vit'"):
        init_tiny(tmp_path / "y", family="vit")
    assert not (tmp_path / "y").exists()


def test_real_clip_tokenizer_next_to_a_tiny_model(tmp_path):
    """The real BPE tokenizer (49408 tokens) gives OpenAI's ids and our pooling finds the EOT."""
    from transformers import CLIPConfig, CLIPModel

    tok_dir = shared_path("clip-tokenizer")
    text = dict(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    text |= dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32
    )
    torch.manual_seed(0)
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=dict(vision, patch_size=8), projection_dim=16)
    ).save_pretrained(tmp_path)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok_dir / f, tmp_path / f)
    backbone = load_backbone(
        f"local:{tmp_path}"
    )  # no preprocessor_config.json: family default, with a warning
    ids = backbone.tokenize(["a photo of a cat."])
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert backbone.eot_index(ids).tolist() == [7]
    reference = backbone.model.get_text_features(input_ids=ids).pooler_output
    torch.testing.assert_close(backbone.encode_text(ids), reference, atol=1e-5, rtol=1e-5)
    assert backbone.preprocess.output_size == (32, 32)


# ---- bad input ----------------------------------------------------------------------------------


def test_bad_specs(tmp_path):
    with pytest.raises(BackboneError, match="Unknown backbone spec prefix 'timm:'"):
        load_backbone("timm:vit")
    with pytest.raises(BackboneError, match="neither a known spec nor an existing directory"):
        load_backbone("clip-vit-b16")
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(f"local:{tmp_path}/missing")
    with pytest.raises(BackboneError, match=r"has no config\.json"):
        load_backbone(f"local:{tmp_path}")


def test_checkpoint_without_tokenizer_files(tmp_path, tiny_clip):
    shutil.copytree(tiny_clip, tmp_path / "m")
    for f in ("vocab.json", "merges.txt"):
        (tmp_path / "m" / f).unlink()
    with pytest.raises(BackboneError, match="has no tokenizer files"):
        load_backbone(f"local:{tmp_path / 'm'}")


def test_unsupported_model_type(tmp_path, tiny_clip):
    shutil.copytree(tiny_clip, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(
        BackboneError, match=r"'bert' checkpoint; vlpeft supports model types \['clip', 'siglip'\]"
    ):
        load_backbone(str(tmp_path / "m"))


def test_hub_offline_message(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(BackboneError, match=r"(?s)Hugging Face Hub.*local:DIR"):
        load_backbone("hf:openai/clip-vit-base-patch16")


def test_core_never_imports_torchvision_or_open_clip(tiny_clip):
    import subprocess

    code = (
        "import sys, vlpeft, vlpeft.cli, vlpeft.backbones, vlpeft.engine.evaluate;"
        f"vlpeft.load_backbone('{tiny_clip}');"
        "bad = [m for m in ('torchvision', 'open_clip') if m in sys.modules]; sys.exit(bool(bad))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_checkpoint_without_weights_is_a_clear_error(tiny_clip, tmp_path):
    import shutil

    from vlpeft.backbones import load_backbone
    from vlpeft.errors import BackboneError

    copy = tmp_path / "no-weights"
    shutil.copytree(tiny_clip, copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(BackboneError, match="no weights"):
        load_backbone(str(copy))
