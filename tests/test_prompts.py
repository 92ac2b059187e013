"""Prompt learners on a tiny CLIP: prompt assembly, exact truncation, method math, save/load, base-to-new."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlpeft.backbones import load_backbone
from vlpeft.errors import ConfigError
from vlpeft.features import FeatureSet
from vlpeft.methods import ClassText, HeadData, Method, get_method, list_methods
from vlpeft.methods.prompts.base import PromptHead
from vlpeft.methods.prompts.prograd import project_gradient
from vlpeft.methods.prompts.tokens import PromptTokens

PROMPT_METHODS = [n for n in list_methods() if issubclass(get_method(n), PromptHead)]
NAMES = ["cat", "sea_lion", "red fox"]


@pytest.fixture(scope="module")
def backbone(tiny_clip):
    return load_backbone(str(tiny_clip))


def make_data(
    backbone,
    names=NAMES,
    shots: int = 3,
    views: int = 2,
    seed: int = 0,
    template="a photo of a {}.",
    tokens=0,
):
    encode = lambda prompts: backbone.encode_text(backbone.tokenize(prompts)).detach()  # noqa: E731
    text = ClassText(names, lambda kind: [template], encode, template)
    g = torch.Generator().manual_seed(seed)
    weights = F.normalize(encode([template.format(n.replace("_", " ")) for n in names]), dim=-1)
    labels = torch.arange(len(names)).repeat_interleave(shots)
    feats = 2 * weights[labels] + 0.3 * torch.randn(views, len(labels), weights.shape[1], generator=g)
    if tokens:  # per-token features (PLOT): a CLS-like token then noisy copies as local features
        feats = feats[:, :, None] + 0.3 * torch.randn(
            views, len(labels), tokens, weights.shape[1], generator=g
        )
    val = FeatureSet(feats[:1, : len(names)], labels[: len(names)])
    return HeadData(FeatureSet(feats, labels), val, text, len(names), logit_scale=float(backbone.logit_scale))


def make_head(name: str, backbone, **overrides):
    cls = get_method(name)
    head = cls(cls.config_class().with_overrides({"epochs": "3", **overrides}))
    head.bind(backbone)
    return head


def test_coop_prompt_is_the_hand_built_embedding_sequence(backbone):
    n = 4
    tokens = PromptTokens(backbone, NAMES, n, "end")
    ctx = torch.randn(n, backbone.text_width)
    emb = backbone.token_embedding
    tok = backbone.tokenizer
    for c, name in enumerate(NAMES):
        body = tok(name.replace("_", " ") + ".", add_special_tokens=False)["input_ids"]
        head = emb(torch.tensor([tok.bos_token_id]))
        tail = emb(torch.tensor([*body, tok.eos_token_id]))
        expected = torch.cat([head, ctx, tail])
        got = tokens(ctx)[c, : len(expected)]
        torch.testing.assert_close(got, expected)
        assert int(tokens.eot[c]) == len(expected) - 1
        name_tokens = emb(torch.tensor(body[:-1]))  # without the "."
        middle = PromptTokens(backbone, NAMES, n, "middle")(ctx)[c, : len(expected)]
        torch.testing.assert_close(middle, torch.cat([head, ctx[:2], name_tokens, ctx[2:], tail[-2:]]))
        front = PromptTokens(backbone, NAMES, n, "front")(ctx)[c, : len(expected)]
        torch.testing.assert_close(front, torch.cat([head, name_tokens, ctx, tail[-2:]]))


def test_learned_prompt_truncation_is_exact(backbone):
    tokens = PromptTokens(backbone, NAMES, 16, "middle")
    embeds = tokens(torch.randn(16, backbone.text_width, generator=torch.Generator().manual_seed(0)))
    full = backbone.encode_text_embeddings(embeds, tokens.eot, truncate=False)
    # Exact math; float32 summation order over fewer positions differs at the 1e-6 level.
    torch.testing.assert_close(
        backbone.encode_text_embeddings(embeds, tokens.eot), full, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", ["coop-ctxv1", "kgcoop"])
def test_word_initialised_prompts_start_at_zero_shot(name, backbone):
    data = make_data(backbone)
    head = make_head(name, backbone)
    head.prepare(data)
    torch.testing.assert_close(head.text_features(), data.text.weights("single"), atol=1e-5, rtol=1e-5)


def test_kgcoop_knowledge_term(backbone):
    data = make_data(backbone)
    head = make_head("kgcoop", backbone)
    head.prepare(data)
    assert head.knowledge_loss(head.text_features()).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # random: a constant shift of every dimension is invisible after LayerNorm
        head.ctx.add_(torch.randn(head.ctx.shape, generator=torch.Generator().manual_seed(0)))
    text = head.text_features()
    expected = 1 - (text * head.clip_weights).sum(-1).mean()
    assert (
        head.knowledge_loss(text).item() == pytest.approx(expected.item(), abs=1e-6) and expected.item() > 0
    )


def test_prograd_projection_on_hand_made_gradients():
    g = project_gradient(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(g, torch.tensor([0.5, 0.5]))  # the conflicting part is removed
    assert float(g @ torch.tensor([-1.0, 1.0])) == pytest.approx(0.0)
    agree = torch.tensor([1.0, 2.0])
    assert torch.equal(project_gradient(agree, torch.tensor([1.0, 0.0])), agree)
    half = project_gradient(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), weight=0.5)
    torch.testing.assert_close(half, torch.tensor([0.75, 0.25]))


def test_prograd_context_ends_with_the_template_words(backbone):
    head = make_head("prograd", backbone)
    head.prepare(make_data(backbone))
    words = backbone.tokenizer("a photo of a", add_special_tokens=False)["input_ids"]
    assert head.ctx.shape == (16, backbone.text_width)
    torch.testing.assert_close(head.ctx[-len(words) :], backbone.token_embedding(torch.tensor(words)))
    assert torch.count_nonzero(head.ctx[: -len(words)]) == 0


def test_cocoop_meta_net_bias_is_shared_and_batched_equals_per_image(backbone):
    data = make_data(backbone)
    head = make_head("cocoop", backbone)
    head.prepare(data)
    dim, width = backbone.embed_dim, backbone.text_width
    assert head.meta_net[0].weight.shape == (dim // 16, dim) and head.meta_net[2].weight.shape == (
        width,
        dim // 16,
    )
    feats = F.normalize(data.val.view(0), dim=-1)
    pi = head.meta_net(feats)
    shifted = head.ctx[None] + pi[:, None]
    delta = shifted - head.ctx[None]
    assert torch.allclose(delta[:, 0], delta[:, -1])  # one bias for every context token
    batched = head.conditional_text(feats)
    for b in range(len(feats)):  # the official per-image loop
        embeds = head.tokens(shifted[b])
        single = F.normalize(backbone.encode_text_embeddings(embeds, head.tokens.eot), dim=-1)
        torch.testing.assert_close(batched[b], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_prompt_matrix(name, backbone, tmp_path):
    data = make_data(backbone, tokens=5 if get_method(name).uses_tokens else 0)
    torch.manual_seed(0)
    head = make_head(name, backbone)
    head.prepare(data)
    x, y = data.train.view(0), data.train.labels
    own = {id(p) for p in head.parameters()}
    assert head.trainable_parameters() and all(id(p) in own for p in head.trainable_parameters())
    assert not any(p.requires_grad for p in backbone.parameters())
    optimizer = torch.optim.Adam(head.trainable_parameters(), lr=1e-3)
    before = head.loss(x, y).item()
    for _ in range(15):
        optimizer.zero_grad()
        head.backward(x, y)
        optimizer.step()
    assert head.loss(x, y).item() < before
    head.eval()
    logits = head.logits(data.val.view(0))
    assert logits.shape == (3, 3)
    head.save_adapter(
        tmp_path, {"num_classes": 3, "embed_dim": backbone.embed_dim, "text_width": backbone.text_width}
    )
    loaded = Method.from_saved(tmp_path)
    loaded.attach(backbone, NAMES)
    torch.testing.assert_close(loaded.logits(data.val.view(0)), logits, atol=1e-5, rtol=1e-5)
    saved = set(loaded.adapter_state())
    assert not any(k.startswith("tokens.") for k in saved)  # class-dependent tokens are rebuilt, never saved


def test_new_classes_rebuild_the_tokens_and_class_specific_context_refuses(backbone):
    head = make_head("coop", backbone, n_ctx="4")
    head.prepare(make_data(backbone))
    head.attach(backbone, ["dog", "owl", "frog", "bee"])
    assert head.logits(torch.randn(2, backbone.embed_dim)).shape == (2, 4)
    specific = make_head("coop", backbone, n_ctx="4", class_specific="true")
    specific.prepare(make_data(backbone))
    assert specific.ctx.shape == (3, 4, backbone.text_width)
    with pytest.raises(ConfigError, match="class-specific context"):
        specific.attach(backbone, ["dog", "owl"])


def test_too_long_prompts_are_a_clear_error(backbone):
    with pytest.raises(ConfigError, match="Use fewer context tokens"):
        PromptTokens(backbone, NAMES, 80)


def test_sinkhorn_plan_has_uniform_marginals():
    from vlpeft.methods.prompts.plot import sinkhorn

    cost = torch.rand(2, 3, 7, 4, generator=torch.Generator().manual_seed(0))
    plan = sinkhorn(cost, eps=0.1, max_iter=1000, thresh=1e-9)
    torch.testing.assert_close(
        plan.sum(-2), torch.full((2, 3, 4), 1 / 4)
    )  # columns: exact after the c update
    torch.testing.assert_close(plan.sum(-1), torch.full((2, 3, 7), 1 / 7), atol=1e-6, rtol=1e-4)
    cheap = torch.zeros(1, 1, 2, 2)
    cheap[0, 0] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # the diagonal is free: the plan concentrates there
    diag = sinkhorn(cheap, eps=0.05, max_iter=200, thresh=1e-9)[0, 0]
    assert diag[0, 0] > 0.49 and diag[0, 1] < 0.01


def test_plot_score_is_the_transported_similarity(backbone):
    from vlpeft.methods.prompts.plot import sinkhorn

    data = make_data(backbone, tokens=5)
    head = make_head("plot-patches", backbone)
    head.prepare(data)
    feats = data.val.view(0)
    local = F.normalize(feats[:, 1:], dim=-1)
    sim = torch.einsum("bmd,ncd->bcmn", local, head.text_features())
    expected = head.logit_scale * (sinkhorn(1 - sim) * sim).sum((-2, -1))
    torch.testing.assert_close(head.logits(feats), expected)
    assert head.text_features().shape == (4, 3, backbone.embed_dim)


def test_text_prompts_on_siglip(tiny_siglip):
    siglip = load_backbone(str(tiny_siglip))
    data = make_data(siglip)
    head = make_head("coop-ctxv1", siglip)
    head.prepare(data)
    assert head.tokens.first_slot == 0 and bool((head.tokens.eot == siglip.context_length - 1).all())
    assert head.logits(data.val.view(0)).shape == (3, 3)


def test_a_saved_tensor_of_another_shape_is_refused_by_name(backbone):
    from vlpeft.errors import ConfigError

    head = make_head("coop", backbone, n_ctx="4")
    head.prepare(make_data(backbone))
    with pytest.raises(ConfigError, match=r"'ctx' has shape \[7, .*expects \[4, "):
        head.load_adapter_state({"ctx": torch.zeros(7, head.ctx.shape[1])})
    assert head.ctx.shape[0] == 4


def test_prograd_uses_its_own_templates_and_counts_words_as_the_code(backbone):
    """OxfordPets: "a type of pet, a photo of a {}." -> 8 words, 9 BPE tokens: 8 zeros, the first 8
    token embeddings learned, "a" fixed before the class name; the teacher uses the same template."""
    data = make_data(backbone, template="a photo of a {}, a type of pet.")  # CoOp's OxfordPets template
    data.dataset = "OxfordPets"
    head = make_head("prograd", backbone)
    head.prepare(data)
    ids = backbone.tokenizer("a type of pet, a photo of a", add_special_tokens=False)["input_ids"]
    assert len(ids) == 9 and head.config.ctx_init == "a type of pet, a photo of a"
    torch.testing.assert_close(head.ctx[8:], backbone.token_embedding(torch.tensor(ids[:8])))
    assert torch.count_nonzero(head.ctx[:8]) == 0 and head.tokens.fixed_words == "a"
    # the prompt is the code's "X X X X X X X X a type of pet, a photo of a <name>." with the X's and
    # the first 8 phrase tokens replaced by the context: 1 + 16 + 1 + name + "." tokens up to EOT
    name_ids = backbone.tokenizer(f"{NAMES[0]}.", add_special_tokens=False)["input_ids"]
    assert int(head.tokens.eot[0]) == 1 + 16 + 1 + len(name_ids)
    teacher = data.text.template_weights(["a type of pet, a photo of a {}."])
    torch.testing.assert_close(head.zero_shot_weights, teacher)
    assert get_method("prograd").preset("EuroSAT", 16) == {"projection_weight": 0.8}
    assert get_method("prograd").preset("EuroSAT", 1) == {"epochs": 50}


def test_prograd_without_an_init_phrase_starts_random_as_coop(backbone):
    head = make_head("prograd", backbone, ctx_init="")
    head.prepare(make_data(backbone))
    assert head.ctx.std().item() == pytest.approx(0.02, rel=0.2) and head.tokens.fixed_words == ""


def test_plot_global_logits_pool_the_unnormalised_prompt_features_as_the_code(backbone):
    import dataclasses

    data = make_data(backbone, tokens=5)
    head = make_head("plot-patches", backbone)
    torch.manual_seed(0)
    head.prepare(data)
    feats = data.val.view(0)
    with torch.no_grad():
        plain = head.logits(feats)
        head.config = dataclasses.replace(head.config, add_global=True)
        pooled = F.normalize(head.raw_text_features().mean(0), dim=-1)
        expected = plain + head.logit_scale * F.normalize(feats[:, 0], dim=-1) @ pooled.t()
        torch.testing.assert_close(head.logits(feats), expected)


def test_plot_refuses_an_init_phrase_it_would_ignore(backbone):
    from vlpeft.errors import ConfigError

    with pytest.raises(ConfigError, match="ctx_init is not supported"):
        make_head("plot-patches", backbone, ctx_init="a photo of a")


def test_runs_saved_under_the_old_plot_name_load_as_plot_patches(backbone, tmp_path):
    import json

    head = make_head("plot-patches", backbone)
    head.prepare(make_data(backbone, tokens=5))
    head.save_adapter(tmp_path, {"num_classes": 3, "embed_dim": backbone.embed_dim})
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**meta, "method": "plot"}))
    assert Method.from_saved(tmp_path).name == "plot-patches"
