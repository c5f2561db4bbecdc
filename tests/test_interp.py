"""labcore.interp: every instrument checked against a brute-force computation or a known answer.

Models are tiny glass-box GPTs (vocab 20, d_model 32, 2 layers, 4 heads); one is trained for a few
seconds on repeated random sequences for the tuned-lens test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from interp_helpers import trained_on_repeats

from labcore import GPT, GPTConfig
from labcore.interp import attribution, diffing, heads, lenses, patching, probing
from labcore.interp.readout import Labelled, hook_name
from labcore.measures.probes import logit_lens
from labcore.training.trainer import seeded_model

V, T = 20, 10


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(seed: int = 0, **kw) -> GPT:
    cfg = GPTConfig(**({"vocab_size": V, "n_ctx": 16, "d_model": 32, "n_layers": 2, "n_heads": 4, "init_std": 0.3} | kw))
    return seeded_model(lambda: GPT(cfg), seed).eval()


@pytest.fixture(scope="module")
def model():
    return make()


@pytest.fixture(scope="module")
def pair():
    clean = torch.randint(0, V, (3, T), generator=gen(1))
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 7) % V
    corrupt[:, 5] = (corrupt[:, 5] + 3) % V
    return clean, corrupt


METRIC = patching.logit_diff_metric(answer=torch.tensor([1, 2, 3]), wrong=torch.tensor([4, 5, 6]))


# --- patching -----------------------------------------------------------------------------------


def test_labelled_and_hook_names():
    assert hook_name("z", 1) == "blocks.1.attn.hook_z" and hook_name("post", 0) == "blocks.0.mlp.hook_post"
    assert hook_name("resid_pre", 3) == "blocks.3.hook_resid_pre" and hook_name("embed") == "hook_embed"
    with pytest.raises(ValueError):
        Labelled(torch.zeros(2, 3), ("layer",))


@pytest.mark.parametrize("hook,layer,cell", [("resid_pre", 1, (3,)), ("z", 0, (2, 1)), ("pattern", 1, (5, 3)),
                                             ("mlp_out", 0, (5,))])
def test_patching_equals_a_manual_rerun(model, pair, hook, layer, cell):
    clean, corrupt = pair
    out = patching.activation_patching(model, clean, corrupt, METRIC, hook=hook)
    name = hook_name(hook, layer)
    _, cache = model.run_with_cache(clean, names_filter=[name])

    def by_hand(x, hook_point):
        x = x.clone()
        if hook == "pattern":  # (B, H, T_q, T_k): cell = (query, head)
            x[:, cell[1], cell[0]] = cache[name][:, cell[1], cell[0]]
        elif hook == "z":  # (B, T, H, dh): cell = (pos, head)
            x[:, cell[0], cell[1]] = cache[name][:, cell[0], cell[1]]
        else:
            x[:, cell[0]] = cache[name][:, cell[0]]
        return x

    with torch.no_grad(), model.hooks([(name, by_hand)]):
        expected = float(METRIC(model(corrupt)))
    assert out.values[(layer, *cell)].item() == pytest.approx(expected, abs=1e-6)
    assert out.axes[: len(cell) + 1] == (("layer", "pos", "head") if hook in ("z", "pattern") else ("layer", "pos"))


@pytest.mark.parametrize("hook", ["resid_pre", "z", "pattern", "mlp_out", "attn_out"])
def test_patching_with_the_corrupted_value_itself_changes_nothing(model, pair, hook):
    _, corrupt = pair
    base = patching.run_metric(model, corrupt, METRIC)
    out = patching.activation_patching(model, corrupt, corrupt, METRIC, hook=hook)
    assert torch.all(out.values == base)


def test_patching_a_whole_layer_restores_the_clean_metric(model, pair):
    clean, corrupt = pair
    out = patching.activation_patching(model, clean, corrupt, METRIC, hook="resid_pre", by_position=False)
    assert out.axes == ("layer",)
    assert torch.allclose(out.values, torch.full((2,), patching.run_metric(model, clean, METRIC), dtype=torch.float64),
                          atol=1e-5)
    # untouched positions before the first corrupted token change nothing
    per_pos = patching.activation_patching(model, clean, corrupt, METRIC, hook="resid_pre", layers=[0])
    base = patching.run_metric(model, corrupt, METRIC)
    assert torch.allclose(per_pos.values[0, :2], torch.full((2,), base, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("hook", ["resid_pre", "z", "mlp_out"])
def test_attribution_patching_matches_activation_patching_for_small_perturbations(model, pair, hook):
    clean, _ = pair
    noise = [("hook_embed", patching.noise_hook(1e-3, gen(3)))]  # causal-tracing corruption, tiny
    base = patching.run_metric(model, clean, METRIC, noise)
    act = patching.activation_patching(model, clean, clean, METRIC, hook=hook, corrupt_hooks=noise)
    att = patching.attribution_patching(model, clean, clean, METRIC, hook=hook, corrupt_hooks=noise)
    assert att.axes == act.axes and att.values.shape == act.values.shape
    effect = (act.values - base).flatten()
    estimate = att.values.flatten()
    assert np.corrcoef(effect.numpy(), estimate.numpy())[0, 1] > 0.99
    assert (effect - estimate).norm() / effect.norm() < 0.05


def test_attribution_patching_of_the_pattern_is_finite_and_zero_without_a_difference(model, pair):
    _, corrupt = pair
    att = patching.attribution_patching(model, corrupt, corrupt, METRIC, hook="attn_scores")
    assert torch.all(att.values == 0)


# --- direct logit attribution -------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"norm": "rmsnorm", "positional": "rope", "mlp": "swiglu"},
                                {"bias": True, "tied_embeddings": False}, {"norm": "none", "mlp": "none"}])
def test_contributions_sum_to_the_logit_difference(kw, pair):
    model = make(1, **kw)
    if kw.get("bias"):
        with torch.no_grad():  # non-zero biases, so the bias terms are tested too
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.3, generator=gen(5))
    clean, _ = pair
    answer, wrong = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    with torch.no_grad():
        logits = model(clean)[:, -1]
    true = logits[torch.arange(3), answer] - logits[torch.arange(3), wrong]
    parts, final = attribution.residual_components(model, clean)
    assert torch.allclose(parts.values.sum(0), final, atol=1e-5)
    dla = attribution.direct_logit_attribution(model, clean, answer, wrong)
    assert dla.labels["component"][0] == "embed" and dla.labels["component"][-1] == "norm bias"
    assert torch.allclose(dla.values.sum(0), true, atol=1e-4 * (1 + true.abs().max()))
    acc = attribution.accumulated_logit_diff(model, clean, answer, wrong)
    assert torch.allclose(acc.values[-1], true, atol=1e-4 * (1 + true.abs().max()))
    heads_ = attribution.head_logit_attribution(model, clean, answer, wrong)
    for layer in range(2):
        attn_row = dla.values[dla.labels["component"].index(f"attn {layer}")]
        b_O = model.blocks[layer].attn.W_O.bias
        if b_O is not None:  # the output bias's own direct contribution, by hand
            resid = final[:, -1]
            centred = b_O - b_O.mean() if kw.get("norm", "layernorm") == "layernorm" else b_O
            s = (resid.var(-1, unbiased=False) + 1e-5).sqrt()
            W_U = model.W_U.weight
            g = model.ln_final.norm.weight
            attn_row = attn_row - ((centred * g)[None] / s[:, None] * (W_U[answer] - W_U[wrong])).sum(-1)
        assert torch.allclose(heads_.values[layer].sum(0), attn_row, atol=1e-5)


def test_accumulated_residual_matches_brute_force(model, pair):
    clean, _ = pair
    acc = attribution.accumulated_resid(model, clean)
    _, cache = model.run_with_cache(clean, names_filter="blocks.1.hook_resid_pre")
    assert torch.equal(acc.values[1], cache["blocks.1.hook_resid_pre"]) and len(acc.labels["layer"]) == 3
    # middle row of the accumulated logit diff: frozen final-norm scale, by hand
    r, rf = acc.values[1][:, -1], acc.values[-1][:, -1]
    ln = model.ln_final.norm
    x = (r - r.mean(-1, keepdim=True)) / (rf.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt() * ln.weight
    u = model.W_E.weight[1] - model.W_E.weight[4]
    got = attribution.accumulated_logit_diff(model, clean, 1, 4)
    assert torch.allclose(got.values[1], x @ u, atol=1e-5)


def test_dla_through_hooked_hf_equals_the_glass_box():
    pytest.importorskip("transformers")
    from labcore.glassbox.hf import HookedHF, llama_from_glassbox

    model = make(2, norm="rmsnorm", positional="rope", mlp="swiglu")
    hooked = HookedHF(llama_from_glassbox(model))
    tokens = torch.randint(0, V, (2, 8), generator=gen(4))
    for fn in (attribution.direct_logit_attribution, attribution.head_logit_attribution):
        a, b = fn(model, tokens, 3, 7), fn(hooked, tokens, 3, 7)
        assert torch.allclose(a.values, b.values, atol=1e-4)
    lens_a, lens_b = lenses.logit_lens_kl(model, tokens), lenses.logit_lens_kl(hooked, tokens)
    assert torch.allclose(lens_a.values, lens_b.values, atol=1e-5)


# --- lenses -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """A 2-layer model trained briefly on repeated random sequences (induction-style data)."""
    return trained_on_repeats(make(3, init_std=0.02), V)


def test_logit_lens_kl_matches_brute_force(model, pair):
    clean, _ = pair
    got = lenses.logit_lens_kl(model, clean)
    layer_logits = logit_lens(model, clean)  # labcore.measures: unembed(resid_pre 0), unembed(resid_post l)
    final = torch.log_softmax(layer_logits[-1].double(), -1)
    lens0 = torch.log_softmax(layer_logits[0].double(), -1)
    assert got.values[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert got.values[0].item() == pytest.approx(float((final.exp() * (final - lens0)).sum(-1).mean()), rel=1e-9)
    assert got.labels["layer"] == ["resid_pre 0", "resid_pre 1", "final"]


def test_tuned_lens_at_identity_init_is_the_logit_lens_exactly(model, pair):
    clean, _ = pair
    lens = lenses.TunedLens(32, 2)
    assert torch.equal(lenses.tuned_lens_kl(model, lens, clean).values, lenses.logit_lens_kl(model, clean).values)
    r = lenses.lens_residuals(model, clean)[1]
    assert torch.equal(lens.logits(model, r, 1), model.unembed(r))


def test_training_the_tuned_lens_lowers_held_out_kl(trained):
    train = heads.repeated_random_tokens(64, 8, V, gen(11))
    held_out = heads.repeated_random_tokens(32, 8, V, gen(12))
    before = lenses.logit_lens_kl(trained, held_out).values
    lens, losses = lenses.train_tuned_lens(trained, train, steps=150, lr=1e-2)
    after = lenses.tuned_lens_kl(trained, lens, held_out).values
    assert losses[-1] < losses[0]
    assert torch.all(after[:-1] < before[:-1]) and after[-1] == 0
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())


# --- head detectors -----------------------------------------------------------------------------


def _one_hot_rows(targets: list[int]) -> torch.Tensor:
    """(1, 1, T, T) pattern with row q all on key targets[q]."""
    n = len(targets)
    p = torch.zeros(1, 1, n, n)
    p[0, 0, torch.arange(n), torch.tensor(targets)] = 1.0
    return p


def test_detectors_on_hand_built_patterns():
    n = 5
    tokens = heads.repeated_random_tokens(1, n, V, gen(0))  # no repeats within a half
    T2 = 2 * n
    prev = _one_hot_rows([0] + list(range(T2 - 1)))
    induct = _one_hot_rows(list(range(n)) + [i + 1 for i in range(n)])  # first half: self
    dup = _one_hot_rows(list(range(n)) + list(range(n)))
    assert heads.previous_token_score(prev).item() == 1.0
    assert heads.attention_sink_score(prev).item() == pytest.approx(1 / (T2 - 1))
    assert heads.induction_score(induct, tokens).item() == 1.0
    assert heads.duplicate_token_score(induct, tokens).item() == 0.0
    assert heads.previous_token_score(induct).item() == 0.0
    assert heads.duplicate_token_score(dup, tokens).item() == 1.0
    assert heads.induction_score(dup, tokens).item() == 0.0
    sink = _one_hot_rows([0] * T2)
    assert heads.attention_sink_score(sink).item() == 1.0
    assert heads.previous_token_score(sink).item() == pytest.approx(1 / (T2 - 1))
    # no queries with a target: NaN, not a misleading 0
    assert torch.isnan(heads.induction_score(prev, torch.arange(T2)[None])).all()


def test_uniform_attention_model_scores_are_known_exactly():
    model = make(4)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.weight.zero_()  # scores all 0: uniform over keys <= query
    n = 6
    tokens = heads.repeated_random_tokens(3, n, V, gen(2))
    scores = heads.head_scores(model, tokens)
    T2 = 2 * n
    uniform = sum(1 / (q + 1) for q in range(1, T2)) / (T2 - 1)
    second_half = sum(1 / (n + i + 1) for i in range(n)) / n  # one target each, row n+i has n+i+1 keys
    for key, want in [("attention_sink", uniform), ("previous_token", uniform),
                      ("duplicate_token", second_half), ("induction", second_half)]:
        assert scores[key].axes == ("layer", "head")
        assert torch.allclose(scores[key].values, torch.full((2, 4), want, dtype=torch.float64), atol=1e-6), key


def test_a_patched_in_previous_token_head_is_found(model):
    tokens = heads.repeated_random_tokens(2, 5, V, gen(6))
    T2 = tokens.shape[1]
    prev = _one_hot_rows([0] + list(range(T2 - 1)))[0, 0]
    induct = _one_hot_rows(list(range(5)) + [i + 1 for i in range(5)])[0, 0]

    def set_head(head, pattern):
        def fn(x, hook):
            x = x.clone()
            x[:, head] = pattern
            return x
        return fn

    fwd = [("blocks.0.attn.hook_pattern", set_head(2, prev)), ("blocks.1.attn.hook_pattern", set_head(1, induct))]
    with model.hooks(fwd):
        scores = heads.head_scores(model, tokens)
    assert scores["previous_token"].values[0, 2].item() == 1.0
    assert scores["previous_token"].values.flatten().topk(2).values[1] < 1.0
    assert scores["induction"].values[1, 1].item() == 1.0
    assert scores["induction"].values.argmax().item() == 1 * 4 + 1


# --- probes with control tasks ------------------------------------------------------------------


def test_control_labels_are_consistent_per_token_type():
    types = torch.randint(0, 30, (500,), generator=gen(1))
    labels = torch.randint(0, 3, (500,), generator=gen(2))
    ctrl = probing.control_labels(types, labels, gen(3))
    for t in types.unique():
        assert ctrl[types == t].unique().numel() == 1
    assert int(ctrl.max()) < 3


def test_selectivity_is_high_for_an_encoded_label_and_near_zero_for_one_that_is_not():
    g = gen(4)
    n_types, N, D = 400, 4000, 12  # many types: a random per-type relabelling barely correlates with A
    label_a = torch.randint(0, 2, (n_types,), generator=g)  # linearly encoded
    label_b = torch.randint(0, 2, (n_types,), generator=g)  # not in the features at all
    types = torch.randint(0, n_types, (N,), generator=g)
    direction = torch.randn(D, generator=g)
    features = torch.randn(N, D, generator=g) + 2.0 * (label_a[types] * 2 - 1)[:, None].float() * direction / direction.norm()
    sel_a = probing.probe_selectivity(features, label_a[types], types, gen(5), n_controls=3)
    sel_b = probing.probe_selectivity(features, label_b[types], types, gen(5), n_controls=3)
    assert sel_a.task_accuracy > 0.95 and sel_a.selectivity > 0.3
    assert abs(sel_b.selectivity) < 0.1 and sel_b.task_accuracy < 0.75


# --- model diffing ------------------------------------------------------------------------------


def test_linear_cka_properties_and_the_kernel_form():
    g = gen(8)
    X = torch.randn(50, 7, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(7, 9, generator=g, dtype=torch.float64) + 0.5 * torch.randn(50, 9, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(9, 9, generator=g, dtype=torch.float64))
    assert diffing.linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    c = diffing.linear_cka(X, Y)
    assert 0 < c < 1
    assert diffing.linear_cka(X, Y @ Q) == pytest.approx(c, abs=1e-12)
    assert diffing.linear_cka(3.7 * X, Y) == pytest.approx(c, abs=1e-12)
    # brute force: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = X Xᵀ, L = Y Yᵀ, H the centring matrix
    H = torch.eye(50, dtype=torch.float64) - 1 / 50
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    assert c == pytest.approx(float((K * L).sum() / ((K * K).sum() * (L * L).sum()).sqrt()), rel=1e-10)
    # not invariant to a general invertible linear map
    A = torch.diag(torch.tensor([10.0, 1, 1, 1, 1, 1, 0.1], dtype=torch.float64))
    assert abs(diffing.linear_cka(X @ A, Y) - c) > 1e-3


def test_js_divergence_matches_scipy():
    scipy_distance = pytest.importorskip("scipy.spatial.distance")
    p, q = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.1, 0.2, 0.7])
    assert diffing.js_divergence(p, q).item() == pytest.approx(scipy_distance.jensenshannon(p, q) ** 2, rel=1e-9)
    assert diffing.js_divergence(p, p).item() == 0.0


def test_a_model_diffed_with_itself_gives_zeros_and_with_another_does_not(model, pair):
    clean, _ = pair
    same = diffing.diff_models(model, model, clean)
    assert torch.all(same["attention_js"].values == 0) and torch.all(same["output_kl"].values == 0)
    assert torch.allclose(same["residual_cka"].values, torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.all(diffing.attention_divergence(model, model, clean, kind="kl").values == 0)
    other = diffing.diff_models(model, make(9), clean)
    assert torch.all(other["attention_js"].values > 0) and torch.all(other["output_kl"].values > 0)
    assert torch.all(other["residual_cka"].values < 1)
    assert diffing.residual_cka(model, make(9), clean, cross=True).values.shape == (3, 3)


def test_dla_on_a_gpt2_through_hooked_hf_sums_to_the_logit_difference():
    transformers = pytest.importorskip("transformers")
    from labcore.glassbox.hf import HookedHF
    from labcore.interp.readout import frozen_norm_parts

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    hooked = HookedHF(transformers.GPT2LMHeadModel(cfg).eval())
    with torch.no_grad():  # non-zero biases (ln_f's β, c_proj's b_O), so their terms are tested
        for name, p in hooked.hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3, generator=gen(5))
    tokens = torch.randint(0, V, (2, 8), generator=gen(4))
    with torch.no_grad():
        logits = hooked(tokens)[:, -1]
    dla = attribution.direct_logit_attribution(hooked, tokens, 3, 7)
    assert dla.labels["component"][:2] == ["embed", "pos_embed"]
    assert torch.allclose(dla.values.sum(0), logits[:, 3] - logits[:, 7], atol=1e-4)
    per_head = attribution.head_logit_attribution(hooked, tokens, 3, 7)
    _, final = attribution.residual_components(hooked, tokens)
    linear, _ = frozen_norm_parts(hooked, final[:, -1])
    W_U = hooked.hf.get_output_embeddings().weight
    for layer in range(2):
        b = hooked.hf.transformer.h[layer].attn.c_proj.bias
        bias_term = (linear(b.expand(2, -1)) * (W_U[3] - W_U[7])).sum(-1)
        attn_row = dla.values[dla.labels["component"].index(f"attn {layer}")]
        assert torch.allclose(per_head.values[layer].sum(0) + bias_term, attn_row, atol=1e-5)
