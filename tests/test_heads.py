"""Feature heads: the shared matrix over the registry, and each method's math against hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlpeft.errors import ConfigError
from vlpeft.features import FeatureSet
from vlpeft.methods import ClassText, FeatureHead, HeadData, Method, get_method, list_methods
from vlpeft.methods.heads.ape import APE, interclass_similarity, select_channels
from vlpeft.methods.heads.clap import CLAP
from vlpeft.methods.heads.cross_modal import CrossModalLP
from vlpeft.methods.heads.linear_probe import LinearProbe, logistic_regression
from vlpeft.methods.heads.lp_pp import LPPP
from vlpeft.methods.heads.taskres import TaskRes
from vlpeft.methods.heads.tip_adapter import TipAdapter, cache_logits, search_grid
from vlpeft.methods.heads.zero_shot import ZeroShot
from vlpeft.training.loop import iterations_per_epoch
from vlpeft.training.schedules import dassl_cosine

HEADS = [
    n for n in list_methods() if issubclass(get_method(n), FeatureHead) and not get_method(n).needs_backbone
]
FAST = {  # keep every head's own recipe but shrink its length for the toy problem
    "epochs": 15, "iterations": 150, "search_step": (20, 5), "search_steps": 3, "views": 3,
    "search_lr": (1e-3,), "search_weight_decay": (0.0,), "search_batch_size": (8,), "feat_num": 8,
}  # fmt: skip
TEMPLATE = "a photo of a {}."


def toy_text(classnames: list[str], seed: int = 0, dim: int = 16, templates: tuple[str, ...] = (TEMPLATE,)):
    """A fake text encoder: each class has a direction; prompts of unknown form get hashed vectors."""
    g = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(len(classnames), dim, generator=g), dim=-1)
    table = {}
    for t, template in enumerate(templates):
        for c, name in enumerate(classnames):
            noise = 0.2 * torch.randn(dim, generator=torch.Generator().manual_seed(1000 * t + c))
            table[template.format(name)] = (protos[c] + noise) * (4.0 + c)  # raw norms differ per class

    def encode(prompts):
        rows = []
        for p in prompts:
            if p not in table:
                table[p] = torch.randn(dim, generator=torch.Generator().manual_seed(abs(hash(p)) % 2**31))
            rows.append(table[p])
        return torch.stack(rows)

    return ClassText(classnames, lambda kind: list(templates), encode, templates[0]), protos


def toy_data(
    classes: int = 4, shots: int = 4, views: int = 3, dim: int = 16, seed: int = 0, val: bool = True
):
    names = [f"thing{i}" for i in range(classes)]
    text, protos = toy_text(names, seed, dim)
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.arange(classes).repeat_interleave(shots)
    feats = 3 * protos[labels] + 1.2 * torch.randn(views, len(labels), dim, generator=g)
    val_labels = torch.arange(classes).repeat(3)
    val_feats = 3 * protos[val_labels] + 1.2 * torch.randn(1, len(val_labels), dim, generator=g)
    val_set = FeatureSet(val_feats, val_labels) if val else None
    return HeadData(
        FeatureSet(feats, labels), val_set, text, classes, logit_scale=100.0, seed=seed, shots=shots
    )


def make_head(name: str, **overrides) -> FeatureHead:
    cls = get_method(name)
    fields = cls.config_class.field_names()
    fast = {k: v for k, v in FAST.items() if k in fields}
    return cls(cls.config_class().with_overrides({**fast, **overrides}))


def fitted(name: str, **overrides) -> tuple[FeatureHead, HeadData]:
    torch.manual_seed(0)
    data = toy_data()
    head = make_head(name, **overrides)
    head.fit(data)
    return head, data


# ---- the shared matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", HEADS)
def test_logits_shape_and_finite(name):
    head, data = fitted(name)
    logits = head.logits(data.val.view(0))
    assert logits.shape == (12, 4) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", HEADS)
def test_only_own_parameters_are_trainable(name):
    head, _ = fitted(name)
    own = {id(p) for p in head.parameters()}
    assert all(id(p) in own for p in head.trainable_parameters())
    assert (head.num_trainable_parameters() > 0) == (head.trained_by_gradient or name == "linear-probe")


@pytest.mark.parametrize("name", HEADS)
def test_save_load_gives_identical_logits(name, tmp_path):
    head, data = fitted(name)
    head.save_adapter(tmp_path, {"num_classes": 4, "embed_dim": 16})
    loaded = Method.from_saved(tmp_path)
    assert type(loaded) is type(head) and loaded.config == head.config
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.logits(data.val.view(0)), head.logits(data.val.view(0)), rtol=0, atol=0
        )


@pytest.mark.parametrize("name", [n for n in HEADS if get_method(n).identity_at_init])
def test_identity_at_init_equals_zero_shot(name):
    data = toy_data()
    torch.manual_seed(0)
    head = make_head(name)
    head.prepare(data)
    reference = ZeroShot()
    reference.prepare(data)
    with torch.no_grad():
        torch.testing.assert_close(head.logits(data.val.view(0)), reference.logits(data.val.view(0)))


@pytest.mark.parametrize("name", [n for n in HEADS if get_method(n).trained_by_gradient])
def test_loss_goes_down_on_a_toy_batch(name):
    data = toy_data()
    torch.manual_seed(0)
    head = make_head(name)
    head.prepare(data)
    x, y = data.train.view(1), data.train.labels
    optimizer = torch.optim.Adam(head.trainable_parameters(), lr=1e-2)
    before = head.loss(x, y).item()
    for _ in range(30):
        optimizer.zero_grad()
        head.loss(x, y).backward()
        optimizer.step()
    assert head.loss(x, y).item() < before


@pytest.mark.parametrize("name", HEADS)
def test_fit_is_deterministic(name):
    a, data = fitted(name)
    b, _ = fitted(name)
    with torch.no_grad():
        torch.testing.assert_close(a.logits(data.val.view(0)), b.logits(data.val.view(0)))


@pytest.mark.parametrize("name", HEADS)
def test_unknown_setting_lists_valid_keys(name):
    cls = get_method(name)
    with pytest.raises(ConfigError, match=r"Unknown setting\(s\) \['nope'\].*Valid keys"):
        cls.config_class().with_overrides({"nope": "1"})


# ---- configs and schedules ------------------------------------------------------------------


def test_overrides_parse_types():
    cfg = (
        get_method("tip-adapter").config_class().with_overrides({"init_alpha": "2.5", "search_step": "10,4"})
    )
    assert cfg.init_alpha == 2.5 and cfg.search_step == (10, 4)
    with pytest.raises(ConfigError, match="cannot read 'x' as float"):
        cfg.with_overrides({"init_alpha": "x"})
    with pytest.raises(ConfigError, match=r"Did you mean 'init_alpha'"):
        cfg.with_overrides({"init_alhpa": "1"})


def test_presets_follow_official_configs():
    assert get_method("tip-adapter").preset("OxfordFlowers", 16) == {
        "init_alpha": 10.0,
        "search_scale": (50.0, 50.0),
    }
    assert get_method("tip-adapter-f").preset("EuroSAT", 16)["epochs"] == 100
    assert get_method("taskres").preset("OxfordFlowers", 2) == {"residual_scale": 1.0, "epochs": 100}
    assert get_method("ape-t").preset("StanfordCars", 16)["eps"] == 5e-3


def test_dassl_schedule_and_iterations():
    lrs = [dassl_cosine(0.002, e, 10, 1, 1e-5) for e in range(4)]
    assert lrs[0] == 1e-5 and lrs[1] == 0.002
    assert lrs[2] == pytest.approx(0.002 * (1 + math.cos(math.pi / 10)) / 2)
    assert iterations_per_epoch(100, 256, "dassl") == 1 and iterations_per_epoch(600, 256, "dassl") == 2
    assert iterations_per_epoch(600, 256, "ceil") == 3


# ---- per-method math ---------------------------------------------------------------------------


def test_tip_adapter_logits_on_a_three_class_cache():
    head = TipAdapter()
    head.register_buffer("weights", torch.eye(3)[:, :2] @ torch.eye(2) + 0)  # (3, 2)
    head.weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    head.register_buffer("keys", torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    head.register_buffer("values", torch.eye(3))
    for name, value in (("alpha", 2.0), ("beta", 3.0), ("clip_scale", 100.0)):
        head.register_buffer(name, torch.tensor(value))
    f = torch.tensor([[1.6, 1.2]])  # normalised: (0.8, 0.6)
    cos = [0.8, 0.6, 0.48 + 0.48]
    expected = [100 * c + 2 * math.exp(-3 * (1 - c)) for c in cos]
    torch.testing.assert_close(head.logits(f)[0], torch.tensor(expected))


def test_tip_adapter_grid_and_cache():
    grid = search_grid(7, 200)
    assert (
        grid[0] == pytest.approx(0.1)
        and grid[1] == pytest.approx(0.1345)
        and grid[-1] == pytest.approx(6.9655)
    )
    affinity = torch.tensor([[1.0, 0.5]])
    out = cache_logits(affinity, torch.eye(2), 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, math.exp(-1.0)]]))


def test_tip_adapter_keys_are_normalised_view_means():
    data = toy_data()
    head = TipAdapter()
    head.prepare(data)
    torch.testing.assert_close(head.keys, F.normalize(data.train.features.mean(0), dim=-1))
    assert head.values.shape == (16, 4) and bool((head.values.sum(1) == 1).all())


def test_tip_adapter_search_uses_validation_only():
    data = toy_data()
    head = make_head("tip-adapter")
    report = head.fit(data)
    assert report["searched"] and report["alpha"] in search_grid(3.0, 5)
    no_val = make_head("tip-adapter")
    assert no_val.fit(toy_data(val=False)) == {"alpha": 1.17, "beta": 1.0, "searched": False}


def test_taskres_is_zero_shot_at_init_and_residual_enters_before_normalising():
    data = toy_data()
    head = TaskRes()
    head.prepare(data)
    with torch.no_grad():
        head.residual.fill_(1.0)
    f = data.val.view(0)
    expected = 100 * F.normalize(f, dim=-1) @ F.normalize(head.base + 0.5, dim=-1).t()
    torch.testing.assert_close(head.logits(f), expected)


def test_lpp_step_sizes_and_alpha_init_by_hand():
    data = toy_data()
    head = LPPP()
    head.prepare(data)
    feats = F.normalize(data.train.view(0), dim=-1).double().numpy()
    text = head.text.double().numpy()
    n = len(feats)
    lr_w, lr_alpha = head.step_sizes(torch.from_numpy(feats).float())
    assert lr_w == pytest.approx(4 * n / np.linalg.eigvalsh(feats.T @ feats).max(), rel=1e-5)
    assert lr_alpha == pytest.approx(n / (4 * ((feats @ text.T) ** 2).sum(0).max()), rel=1e-5)
    labels = data.train.labels.numpy()
    cos = feats @ text.T
    # official calculate_init_alpha: each sample's score with its own class (one-hot mask), per class mean
    alpha0 = 250 * np.mean([cos[labels == c, c].mean() for c in range(4)])
    assert head.alpha[0].item() == pytest.approx(alpha0, rel=1e-5) and bool(
        (head.alpha == head.alpha[0]).all()
    )
    sums = np.stack([feats[labels == c].sum(0) for c in range(4)])
    np.testing.assert_allclose(head.linear.weight.detach().numpy(), sums, rtol=1e-5, atol=1e-6)


def test_lpp_alpha_gradient_accumulates_as_the_code():
    head = LPPP()
    head.prepare(toy_data())
    head.alpha.grad = torch.ones(4)
    head._alpha_step(0.5)
    assert head.alpha.grad is not None  # not zeroed: the next update uses the running sum
    fresh = make_head("lp++", accumulate_alpha_grad="false")
    fresh.prepare(toy_data())
    fresh.alpha.grad = torch.ones(4)
    fresh._alpha_step(0.5)
    assert fresh.alpha.grad is None


def test_clap_lambda_initialisation_by_hand():
    data = toy_data()
    head = CLAP()
    head.prepare(data)
    feats = F.normalize(data.train.features, dim=-1)  # (V, N, D)
    protos = F.normalize(head.text, dim=-1)
    expected = []
    for c in range(4):
        rows = feats[:, data.train.labels == c].reshape(-1, 16)
        expected.append(float((100 * rows @ protos.t()).softmax(-1)[:, c].mean()))
    torch.testing.assert_close(head.penalty_weights, torch.tensor(expected))


def test_clap_penalty_is_a_class_mean_of_weighted_squared_distances():
    data = toy_data()
    head = CLAP()
    head.prepare(data)
    with torch.no_grad():
        head.prototypes[1] += 2.0
    x, y = data.train.view(0), data.train.labels
    ce = F.cross_entropy(head.logits(x), y)
    penalty = head.penalty_weights[1] * (2.0**2 * 16) / 4
    torch.testing.assert_close(head.loss(x, y), ce + penalty)


def test_logistic_regression_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    data = toy_data(shots=6)
    x, y = data.train.view(0), data.train.labels
    for c in (1.0, 0.05):
        w, b = logistic_regression(x, y, 4, c)
        reference = sklearn.LogisticRegression(C=c, max_iter=1000).fit(x.numpy(), y.numpy())
        np.testing.assert_allclose(w.numpy(), reference.coef_, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(b.numpy(), reference.intercept_, rtol=2e-3, atol=2e-3)


def test_logistic_regression_is_at_the_optimum():
    data = toy_data(shots=6)
    x, y = data.train.view(0).double(), data.train.labels
    w, b = logistic_regression(x, y, 4, 0.3, tol=1e-8)
    w, b = w.double().requires_grad_(), b.double().requires_grad_()
    objective = F.cross_entropy(x @ w.t() + b, y) + w.pow(2).sum() / (2 * 0.3 * len(x))
    objective.backward()
    assert float(w.grad.abs().max()) < 1e-4 and float(b.grad.abs().max()) < 1e-4


def test_linear_probe_c_search_follows_coop(monkeypatch):
    """Accuracy peaks at C = 10**0.7: CoOp's grid then 8 bisections in log space end near it."""
    head = LinearProbe()
    monkeypatch.setattr(head, "_solve", lambda data, c: (torch.tensor(c), torch.tensor(0.0)))
    monkeypatch.setattr(head, "_val_accuracy", lambda data, wb: -abs(math.log10(float(wb[0])) - 0.7))
    monkeypatch.setattr(head, "_set", lambda w, b: None)
    report = head.fit(toy_data())
    assert report["c_peak"] == 1.0
    assert math.log10(report["c"]) == pytest.approx(0.7, abs=0.1)


def test_ape_similarity_closed_form_equals_the_loop():
    g = torch.Generator().manual_seed(0)
    groups = [torch.randn(3, 5, generator=g) for _ in range(4)]
    total, count = torch.zeros(5), 0
    for i in range(4):
        for j in range(4):
            if i != j:
                for m in range(3):
                    for n in range(3):
                        total += groups[i][m] * groups[j][n]
                        count += 1
    torch.testing.assert_close(interclass_similarity(groups), total / count)


def test_ape_channel_selection_and_refinement():
    text = torch.tensor([[1.0, 0.0, 0.5], [-1.0, 0.0, 0.5]])  # channel 0 varies across classes, 1 never
    keys = torch.tensor([[1.0, 0.0, 0.5], [-1.0, 0.0, 0.5]])
    idx = select_channels(text, keys, torch.tensor([0, 1]), (0.5, 0.5), k=1)
    assert idx.tolist() == [0]
    head = APE()
    head.register_buffer("keys", keys)
    head.register_buffer("weights", text)
    head.register_buffer("values", torch.eye(2))
    head.register_buffer("channels", idx)
    probs = torch.tensor([1.0, -1.0]).softmax(0)  # softmax of (F'·W') for key 0: cosines (1, -1)
    kl = math.log2((1 + 1e-6) / (float(probs[0]) + 1e-6))
    torch.testing.assert_close(head._refinement(0.5)[0], torch.tensor([math.exp(0.5 * kl), 0.0]))


def test_cross_modal_schedule_and_batch_rule():
    head = make_head("cross-modal-lp")
    assert head._lr(1e-3, 0) == 1e-5 and head._lr(1e-3, 25) == pytest.approx(5e-4)
    assert head._lr(1e-3, 50) == pytest.approx(1e-3)
    assert head._fits(8, n_images=32, n_text=8) and not head._fits(32, n_images=32, n_text=8)
    uni = make_head("zs-init-lp")
    assert uni._text_bs(32) == 0 and uni._fits(32, n_images=64, n_text=1)


def test_cross_modal_uses_text_samples():
    torch.manual_seed(0)
    data = toy_data(val=False)
    cross, uni = make_head("cross-modal-lp", batch_size="8"), make_head("zs-init-lp", batch_size="8")
    cross.fit(data)
    uni.fit(data)
    assert not torch.allclose(cross.weight, uni.weight)
    assert isinstance(cross, CrossModalLP)


def test_stacked_grid_training_equals_torch_adamw_one_setting_at_a_time():
    """The (lr, wd) settings of one batch size train at once; each must match a plain AdamW run."""
    from vlpeft.methods.heads.cross_modal import _Stream

    data = toy_data(val=False)
    head = make_head("cross-modal-lp", iterations="60", warmup_iterations="10")
    head.prepare(data)
    init = head.weight.detach().clone()
    settings = [(1e-2, 0.0, 8), (3e-3, 1e-2, 8)]
    _, stacked = head._train_group(data, settings, 8, init)
    images, image_labels, text, text_labels = head._samples(data)
    for (lr, wd, bs), result in zip(settings, stacked, strict=True):
        weight = torch.nn.Parameter(init.clone())
        optimizer = torch.optim.AdamW([weight], lr=lr, weight_decay=wd)
        streams = [_Stream(len(images), bs - 4, data.seed), _Stream(len(text), 4, data.seed + 1)]
        for it in range(60):
            for group in optimizer.param_groups:
                group["lr"] = head._lr(lr, it)
            i, t = streams[0].next(), streams[1].next()
            logits = 100 * torch.cat([images[i], text[t]]) @ weight.t()
            loss = F.cross_entropy(logits, torch.cat([image_labels[i], text_labels[t]]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        torch.testing.assert_close(result, weight.detach(), atol=1e-5, rtol=1e-4)


def _outside(rule) -> float:
    """A value just outside ``rule``."""
    if rule.high != float("inf"):
        return rule.high + 0.5
    return rule.low if rule.low_open else rule.low - 1


@pytest.mark.parametrize("name", sorted(__import__("vlpeft.methods", fromlist=["x"]).list_methods()))
def test_every_config_refuses_out_of_range_values_naming_the_field(name):
    """Every registered method's config, every shared numeric setting: a clear ConfigError, not a
    torch error later (lr=-1, epochs=0, views=0, r=0, dropout=1.5, momentum=1, ...)."""
    import dataclasses

    from vlpeft.errors import ConfigError
    from vlpeft.methods import get_method
    from vlpeft.methods.base import RANGES

    cfg = get_method(name).config_class()
    checked = [f.name for f in dataclasses.fields(cfg) if f.name in RANGES]
    for field in checked:
        bad = _outside(RANGES[field])
        value = int(bad) if isinstance(getattr(cfg, field), int) and float(bad).is_integer() else bad
        with pytest.raises(ConfigError, match=rf"^{field} must be"):
            cfg.with_overrides({field: str(value)})
    if "lr" in checked:
        with pytest.raises(ConfigError, match=r"lr must be > 0, got -1"):
            cfg.with_overrides({"lr": "-1"})
