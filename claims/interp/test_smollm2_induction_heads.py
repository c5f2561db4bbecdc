"""SmolLM2 has induction heads: it copies a repeated random sequence, and a few heads do it.

Lab notebook. Olsson et al. (2022) find induction heads in every transformer language model they
study with more than one layer: on a sequence of random tokens repeated once, the loss on the
second copy is far below the loss on the first (the first copy is unpredictable; the second can
be copied), and heads exist that attend from each token of the second copy to the token after its
first occurrence. Knocking those heads out removes the copying.

Our version (SmolLM2-135M, 30 layers × 9 heads, fp32; one CPU core, ~30 s after loading):
* input: 4 sequences [BOS, x, x], x = 32 distinct uniform random token ids (seeded by --lab-seed).
* loss on the first copy (positions predicting x₂…x₃₂) and on the second copy (predicting the
  second x₁…x₃₂), nats/token.
* induction score per head (``labcore.interp.heads``), top k=10 heads by score.
* ablation: zero the top-10 heads' outputs (``hook_z``) vs zero 10 random heads (5 draws) from
  layers 2–29 excluding the top 10 (layers 0–1 are excluded because zeroing early heads breaks
  everything downstream, which says nothing about copying).

Seen while writing this (seed 0): first copy 14.9, second copy 4.1 nats; 9 heads score > 0.3,
the best L18H6 0.87, L17H3/4/5 0.63–0.70; ablating the top 10 raises the second-copy loss to
13.0 nats, 3 random draws of 10 heads to 8.8, 4.7, 6.7.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="interp_smollm2_induction_heads",
    paper="interp",
    statement=(
        "“Induction heads … are implemented by a circuit consisting of a pair of attention heads in different "
        "layers … [they] search over the context for previous examples of the present token … and copy” — "
        "found in every multi-layer model studied; on repeated random tokens the second repeat is predicted "
        "far better than the first."
    ),
    source=Source(title="In-context Learning and Induction Heads", arxiv="2209.11895", version="v1",
                  where="§Key Concepts (induction heads; repeated random tokens), Argument 4 (ablations)"),
    paper_value="qualitative: induction heads in all multi-layer models; ablating them removes most in-context learning",
    prediction=(
        "Second-copy loss < 1/2 the first-copy loss; ≥ 3 heads with induction score > 0.3; zeroing the top-10 "
        "induction heads raises the second-copy loss at least 2× as much as zeroing 10 random heads (mean of 5 draws)."
    ),
    metric="loss per token (nats) on the two copies; induction score; Δ second-copy loss under ablation (top-10 vs random-10)",
    tolerance="second/first < 0.5; n(score > 0.3) ≥ 3; Δ_top ≥ 2 × mean Δ_random",
    tolerance_why=(
        "Seed = the random tokens and the random heads. Thresholds (0.5, 3, 2×) written before running. Table "
        "fixtures/calibration/interp_smollm2_induction_heads.json, seeds 0–4, 5/5 passed: second/first 0.24–0.29; "
        "8–10 heads > 0.3; Δ_top 8.5–9.2 nats vs mean Δ_random 0.26–1.23, ratio 6.9–35 (the loosest margin: one "
        "random draw of 10 heads can hit early copying heads). Recalibrated after moving to the shared smollm2 "
        "fixture and adding the viewer snapshots (same numbers). Fresh seeds 100–104 "
        "(fixtures/calibration/interp_smollm2_induction_heads.fresh.json): 5/5 passed; second/first 0.20–0.31, "
        "8–12 heads > 0.3, ablation ratio 4.5–43."
    ),
    tier="quick",
    tags=("real_model",),
    calibration="fixtures/calibration/interp_smollm2_induction_heads.json",
    status="confirmed",
)

HALF, BATCH, K, N_RANDOM, SNAP = 32, 4, 10, 5, 8


@pytest.fixture(scope="module")
def measured(lab_seed, smollm2):
    from labcore.interp import heads
    from labcore.measures.probes import zero_head

    model, tok, load_seconds = smollm2.model, smollm2.tokenizer, smollm2.load_seconds
    g = torch.Generator().manual_seed(lab_seed)
    tokens = heads.repeated_random_tokens(BATCH, HALF, tok.vocab_size, g, prefix=tok.bos_token_id)
    scores = heads.head_scores(model, tokens)
    n_heads = scores["induction"].values.shape[1]

    def copy_losses(hooks=()):
        with torch.no_grad(), model.hooks(list(hooks)):
            logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
        loss = loss.view(BATCH, -1)  # index p predicts token p + 1; tokens: BOS, x (1..HALF), x (HALF+1..)
        return float(loss[:, 1:HALF].mean()), float(loss[:, HALF:].mean())

    def ablate(flat_ids):
        return [h for i in flat_ids for h in zero_head(*divmod(int(i), n_heads))]

    ind = scores["induction"].values
    top = torch.topk(ind.flatten(), K).indices.tolist()
    pool = [i for i in range(2 * n_heads, ind.numel()) if i not in top]
    randoms = [[pool[j] for j in torch.randperm(len(pool), generator=g)[:K].tolist()] for _ in range(N_RANDOM)]
    first, second = copy_losses()
    out = {"load_seconds": load_seconds, "first": first, "second": second, "scores": scores, "top": top,
           "n_heads": n_heads, "top_ablated": copy_losses(ablate(top))[1],
           "random_ablated": [copy_losses(ablate(r))[1] for r in randoms], "random_sets": randoms}
    _, cache = model.run_with_cache(tokens[:1], names_filter=[f"blocks.{top[0] // n_heads}.attn.hook_pattern"])
    out["pattern"] = cache[f"blocks.{top[0] // n_heads}.attn.hook_pattern"][0, top[0] % n_heads].float().numpy()
    out["snapshot"] = _snapshot(model, tok, tokens[0], [t // n_heads for t in top])
    return out


def _snapshot(model, tok, seq, top_layers):
    """For the report's viewer: [BOS, x₁…x₈, x₁…x₈] of the first sequence, every head of the two layers
    holding the best induction heads, plus layer 1 (before any induction head) for contrast."""
    short = torch.cat([seq[:1], seq[1:1 + SNAP], seq[1:1 + SNAP]])[None]  # (1, 2·SNAP + 1)
    layers = sorted({1, *list(dict.fromkeys(top_layers))[:2]})
    names = [f"blocks.{l}.attn.hook_pattern" for l in layers]
    _, cache = model.run_with_cache(short, names_filter=names)
    return {"tokens": [tok.decode([t]) for t in short[0].tolist()],
            "layers": {l: cache[n][0].float() for l, n in zip(layers, names)}}  # (H, T, T) per layer


def test_smollm2_has_induction_heads(lab, measured):
    m = measured
    ind = m["scores"]["induction"].values.numpy()
    H = m["n_heads"]
    d_top = m["top_ablated"] - m["second"]
    d_random = [r - m["second"] for r in m["random_ablated"]]
    n_strong = int((ind > 0.3).sum())
    lab.record(load_seconds=m["load_seconds"], first_copy_loss=m["first"], second_copy_loss=m["second"],
               ratio=m["second"] / m["first"], n_heads_above_0_3=n_strong,
               top_heads=[(i // H, i % H, round(float(ind.flat[i]), 3)) for i in m["top"]],
               delta_top=d_top, delta_random=d_random, delta_random_mean=float(np.mean(d_random)),
               ablation_ratio=d_top / max(float(np.mean(d_random)), 1e-6))

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    im = axes[0].imshow(ind.T, aspect="auto", cmap="magma", vmin=0, vmax=1)
    axes[0].set(xlabel="layer", ylabel="head", title="induction score per head (repeated random tokens)")
    fig.colorbar(im, ax=axes[0])
    L0, h0 = divmod(m["top"][0], H)
    axes[1].imshow(m["pattern"], cmap="viridis")
    axes[1].set(title=f"L{L0}H{h0} attention on [BOS, x, x]: the off-diagonal stripe", xlabel="key", ylabel="query")
    bars = [m["second"], m["top_ablated"], *m["random_ablated"]]
    axes[2].bar(range(len(bars)), bars, color=["C0", "C3"] + ["C7"] * len(d_random))
    axes[2].axhline(m["first"], color="k", ls="--", label=f"first copy {m['first']:.1f}")
    axes[2].set_xticks(range(len(bars)), ["clean", f"top {K}"] + [f"rand {i}" for i in range(len(d_random))], rotation=45)
    axes[2].set(ylabel="second-copy loss (nats)", title="ablation")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    lab.savefig(fig, "induction_heads")
    for layer, pattern in m["snapshot"]["layers"].items():  # one viewer snapshot per layer: (1, H, T, T)
        lab.save_attention(m["snapshot"]["tokens"], pattern[None], f"layer{layer}")

    assert m["second"] < 0.5 * m["first"], f"no copying: first {m['first']:.2f}, second {m['second']:.2f} nats"
    assert n_strong >= 3, f"only {n_strong} heads with induction score > 0.3"
    # control: the same number of random heads must matter much less
    assert d_top >= 2 * np.mean(d_random), f"Δ top-{K} {d_top:.2f} vs random {np.round(d_random, 2)} nats"
