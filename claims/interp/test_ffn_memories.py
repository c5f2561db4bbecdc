"""SmolLM2's MLPs act as key-value memories that promote the prediction, more so in upper layers.

Lab notebook. Geva et al. (2021) read a feed-forward layer FF(x) = f(x·Kᵀ)·V as a memory: each key
(row of K) fires on textual patterns, and the matching value (row of V, a column of W_out) is a
distribution over the vocabulary once projected by the unembedding; in upper layers the values'
top tokens agree with the next token of the keys' top-triggering contexts far more often than
chance. Geva et al. (2022) add that the FFN updates *promote* the eventual prediction, and that the
promoting happens mostly in the upper layers.

Our version (SmolLM2-135M, 30 layers, SwiGLU d_mlp 1536, fp32; one CPU core, ~10 s after loading):
* text: every prose window of 64 tokens (``load_domain("prose")``; eval windows first, then the
  train windows — no training happens here, so both are unseen text to the model).
* (a) direct logit attribution (``labcore.interp.readout.frozen_norm_parts``, the final RMSNorm's
  scale frozen at the full residual) of each layer's ``hook_mlp_out`` to the model's own top-1
  token, against the mean logit (direction W_U[top1] − mean_v W_U[v]), averaged over the held-out
  eval windows, positions ≥ 1. Spearman ρ(layer, mean DLA); upper third (layers 20–29) vs lower
  third (0–9). Control: the same attribution to the model's rank-1000 token at each position
  (a token it does not predict).
* (b) 200 neurons (20 per layer, layers 20–29, a fixed sample drawn with seed 0 — not --lab-seed).
  Neuron i's value vector W_out[:, i] through the final norm's gain γ (the frozen scale is a positive
  scalar per position and does not change a ranking) and the unembedding: its top-k = 50 promoted
  tokens. Its top-activating contexts: the 5 positions (all windows, positions with a next token in
  the window) with the largest ``hook_post`` activation. Hit = one of those 5 next tokens is in its
  top-50. Control: the same hit rate with neurons shuffled — neuron i's top-50 against neuron j's
  contexts, averaged over all i ≠ j (every shuffle at once, so no randomness).

Prediction (written before running): (a) ρ ≥ 0.5 and upper-third mean > lower-third mean; control
token's upper-third mean < ½ the top-1's. (b) real hit rate ≥ 2× the shuffled rate.

Seen (deterministic; two runs gave identical numbers): (a) does not hold — ρ = −0.10. The MLP
DLA to the top-1 token is small and positive through the middle (0.1–0.7), peaks in layers 19–25
(0.8, 0.7, 1.2, 1.5, 0.8, 0.4, 0.8), then turns sharply negative in the last three layers (−1.2,
−3.9, −0.5), so the upper-third mean is −0.02 vs 0.39 for the lower third (layer 0: 1.07). (b) does
not hold at the 2× bar: hit rate 0.050 (10 of 200 neurons) vs 0.031 shuffled (ratio 1.6); layers
22–23 reach 0.15, layers 26–29 are 0.00. Both tests are strict xfails with these numbers.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="interp_ffn_key_value_memories",
    paper="interp",
    statement=(
        "“We show that feed-forward layers in transformer-based language models operate as key-value memories, "
        "where each key correlates with textual patterns in the training examples, and each value induces a "
        "distribution over the output vocabulary … the learned patterns … upper layers learn more semantic ones.” "
        "(2012.14913); “FFN updates … promote concepts in the vocabulary space … [and] the final prediction is "
        "constructed … mostly in the upper layers” (2203.14680)."
    ),
    source=Source(title="Transformer Feed-Forward Layers Are Key-Value Memories", arxiv="2012.14913", version="v2",
                  where=("§4 (values as distributions over the vocabulary; agreement with the next token of the "
                         "top-triggering prefixes rises in upper layers); with Geva et al. 2022, 'Transformer "
                         "Feed-Forward Layers Build Predictions by Promoting Concepts in the Vocabulary Space', "
                         "arXiv 2203.14680, §3–4")),
    paper_value=("qualitative: value–next-token agreement well above chance in upper layers (≈ 0 in lower layers); "
                 "FFN updates promote the prediction, mostly in upper layers"),
    prediction=(
        "(a) mean MLP direct logit attribution to the model's top-1 token rises with depth: Spearman ρ ≥ 0.5, "
        "upper-third mean > lower-third mean; control (rank-1000 token): upper-third mean < ½ the top-1's. "
        "(b) upper-layer neurons: fraction whose top-50 value tokens contain a next token of their 5 "
        "top-activating contexts ≥ 2× the same fraction with neurons shuffled."
    ),
    metric=("Spearman ρ(layer, mean MLP DLA to top-1); upper/lower-third means; neuron hit rate (top-50 value "
            "tokens ∋ next token at top-5 contexts) vs all-pairs shuffled rate"),
    tolerance="ρ ≥ 0.5; upper > lower; control upper < ½ top-1 upper; hit rate ≥ 2 × shuffled",
    tolerance_why=(
        "No randomness: fixed text (all prose windows), fixed neuron sample (seed 0, not --lab-seed), all-pairs "
        "shuffle. Thresholds (ρ 0.5, ½, 2×) written before the first run; both predictions fail → strict xfail. "
        "Table fixtures/calibration/interp_ffn_key_value_memories.json (seeds 0–4) and its .fresh.json (100–104): "
        "every value identical on all 10 seeds (ρ −0.10, upper/lower third −0.02/0.39, hit 0.050 vs shuffled "
        "0.031); both tests strict-xfailed on all 10."
    ),
    tier="quick",
    tags=("real_model",),
    calibration="fixtures/calibration/interp_ffn_key_value_memories.json",
    status="confirmed",
)

SEQ, K, N_CTX, PER_LAYER, CONTROL_RANK = 64, 50, 5, 20, 1000


@pytest.fixture(scope="module")
def measured(smollm2):
    from labcore.interp.readout import final_norm, final_resid_name, frozen_norm_parts, unembedding_weight
    from labcore.pretrained.corpus import load_domain

    model, tok, load_seconds, base = smollm2.model, smollm2.tokenizer, smollm2.load_seconds, smollm2.base
    prose = load_domain("prose", tok)
    ev, tr = prose.eval_blocks(SEQ), prose.train_blocks(SEQ)
    tokens = torch.cat([ev, tr])
    n_eval = ev.shape[0]
    L = base.config.num_hidden_layers
    upper = list(range(2 * L // 3, L))
    final = final_resid_name(model)
    names = [final] + [f"blocks.{l}.hook_mlp_out" for l in range(L)] + [f"blocks.{l}.mlp.hook_post" for l in upper]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names)

    # (a) direct logit attribution of each MLP to the model's top-1 (and rank-1000) token, eval windows
    W_U = unembedding_weight(model).detach().float()
    resid = cache[final][:n_eval, 1:]
    linear, _ = frozen_norm_parts(model, resid)
    order = logits[:n_eval, 1:].float().argsort(-1, descending=True)
    mean_u = W_U.mean(0)
    dla = {}
    for name, ids in (("top1", order[..., 0]), ("control", order[..., CONTROL_RANK - 1])):
        u = W_U[ids] - mean_u
        dla[name] = np.array([float((linear(cache[f"blocks.{l}.hook_mlp_out"][:n_eval, 1:]) * u).sum(-1).mean())
                              for l in range(L)])

    # (b) value vectors vs the next tokens of the top-activating contexts
    gamma = final_norm(model).weight.detach().float()
    g = torch.Generator().manual_seed(0)
    d_mlp = cache[f"blocks.{upper[0]}.mlp.hook_post"].shape[-1]
    promoted, next_toks, neuron_ids = [], [], []
    nxt = tokens[:, 1:].reshape(-1)
    for l in upper:
        idx = torch.randperm(d_mlp, generator=g)[:PER_LAYER]
        W_out = base.model.layers[l].mlp.down_proj.weight.detach().float()[:, idx]  # (d, n)
        proj = W_U @ (gamma[:, None] * W_out)  # (V, n)
        promoted.append(proj.topk(K, dim=0).indices.T)  # (n, K)
        act = cache[f"blocks.{l}.mlp.hook_post"][:, :-1, idx].reshape(-1, PER_LAYER)  # positions with a next token
        next_toks.append(nxt[act.topk(N_CTX, dim=0).indices.T])  # (n, N_CTX)
        neuron_ids += [(l, int(i)) for i in idx]
    promoted, next_toks = torch.cat(promoted), torch.cat(next_toks)
    n = promoted.shape[0]
    member = torch.zeros(n, W_U.shape[0], dtype=torch.bool)
    member.scatter_(1, promoted, True)
    hits = member[:, next_toks].any(-1).double()  # (i, j): neuron i's top-K ∋ a next token of neuron j's contexts
    diag = torch.eye(n, dtype=torch.bool)
    per_layer = hits.diagonal().view(len(upper), PER_LAYER).mean(1)
    return {"load_seconds": load_seconds, "dla": dla, "L": L, "upper": upper, "n_windows": tokens.shape[0],
            "n_eval": n_eval, "hit": float(hits.diagonal().mean()), "shuffled": float(hits[~diag].mean()),
            "hit_per_layer": per_layer.tolist(), "n_neurons": n}


@pytest.mark.xfail(strict=True, reason=(
    "deterministic: Spearman ρ(layer, MLP DLA to top-1) = −0.10; lower third 0.39, upper third −0.02: the DLA "
    "peaks at layers 19–25 (up to 1.5 at layer 22) and the last three MLPs push the top-1 down (−1.2, −3.9, "
    "−0.5); control (rank-1000 token) upper third 0.18. Hypothesis: SmolLM2's final MLPs are calibration / "
    "anti-overconfidence layers that shrink the winning logit (cf. 'entropy neurons', Stolfo et al. 2024), so "
    "promotion is concentrated in the upper-middle layers, not rising to the end as in GPT-2 / WikiLM"))
def test_mlp_promotes_prediction_more_in_upper_layers(lab, measured):
    from scipy.stats import spearmanr

    m = measured
    L, third = m["L"], m["L"] // 3
    top1, ctrl = m["dla"]["top1"], m["dla"]["control"]
    rho = float(spearmanr(np.arange(L), top1).statistic)
    lower, upper = float(top1[:third].mean()), float(top1[-third:].mean())
    ctrl_upper = float(ctrl[-third:].mean())
    lab.record(load_seconds=m["load_seconds"], n_eval_windows=m["n_eval"], spearman_rho=rho,
               lower_third_mean=lower, upper_third_mean=upper, control_upper_third_mean=ctrl_upper,
               control_lower_third_mean=float(ctrl[:third].mean()),
               dla_top1=[round(float(x), 3) for x in top1], dla_control=[round(float(x), 3) for x in ctrl])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(top1, "o-", label="model's top-1 token")
    ax.plot(ctrl, "s-", color="C7", label=f"control: rank-{CONTROL_RANK} token")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="layer", ylabel="mean direct logit attribution (vs mean logit)",
           title=f"MLP output → prediction (SmolLM2, prose), Spearman ρ = {rho:.2f}")
    ax.legend()
    fig.tight_layout()
    lab.savefig(fig, "mlp_dla_by_layer")

    assert rho >= 0.5, f"Spearman ρ(layer, MLP DLA) = {rho:.2f} < 0.5"
    assert upper > lower, f"upper-third mean {upper:.3f} ≤ lower-third mean {lower:.3f}"
    # control: a token the model does not predict is not promoted the same way
    assert ctrl_upper < 0.5 * upper, f"control upper-third {ctrl_upper:.3f} vs top-1 upper-third {upper:.3f}"


@pytest.mark.xfail(strict=True, reason=(
    "deterministic: 10 of 200 upper-layer neurons (0.050) have a next token of their top-5 contexts in their "
    "top-50 value tokens vs 0.031 with neurons shuffled (ratio 1.6 < 2); layers 22–23 reach 0.15, layers 26–29 "
    "0.00. Hypothesis: ~1.1k tokens of prose give each neuron weak, frequent-token-dominated top contexts (Geva "
    "et al. used top-25 prefixes from a large corpus), and a sample of 200 neurons gives ~10 hits — too few to "
    "separate 1.6× from 2×; the last layers' values suppress rather than promote (see the DLA test)"))
def test_value_vectors_agree_with_next_tokens(lab, measured):
    m = measured
    lab.record(hit_rate=m["hit"], shuffled_rate=m["shuffled"], ratio=m["hit"] / max(m["shuffled"], 1e-9),
               n_neurons=m["n_neurons"], k=K, n_contexts=N_CTX,
               hit_rate_per_layer=dict(zip(m["upper"], [round(x, 3) for x in m["hit_per_layer"]])))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(m["upper"], m["hit_per_layer"], color="C0", label="value top-50 ∋ next token (own contexts)")
    ax.axhline(m["shuffled"], color="C3", ls="--", label=f"neurons shuffled {m['shuffled']:.3f}")
    ax.set(xlabel="layer", ylabel="fraction of neurons", title=f"value vectors vs top contexts, k={K}, {N_CTX} contexts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    lab.savefig(fig, "value_vector_agreement")

    assert m["hit"] >= 2 * m["shuffled"], f"hit rate {m['hit']:.3f} vs shuffled {m['shuffled']:.3f}"
