"""Attention sinks: SmolLM2 parks attention on the first token, and window attention breaks without it.

Lab notebook. Xiao et al. (2023) observe that beyond the bottom two layers most heads of Llama-2
put a large share of their attention on the initial token, whatever that token is ("attention
sink"), because softmax must put its mass somewhere. Consequence (StreamingLLM, their Table 1):
window attention that evicts the first tokens' keys makes perplexity explode; keeping 4 initial
tokens ("sinks") plus the window restores it close to the full-attention value.

Our version (SmolLM2-135M, fp32, prose from fixtures/corpus; no randomness: one run suffices):
* sink score per head: mean attention on position 0 over queries q ≥ 1 (``labcore.interp.heads``)
  on 4 held-out prose windows of 64 tokens *without* BOS, so position 0 is an ordinary word.
  Control: the same mass on position 1 (as ordinary a word, one step later) must be small.
* window attention by masking the scores (``hook_attn_scores``) of every layer: each query sees
  only its last W=8 keys; "+4 sinks" also keeps keys 0–3. Positions stay the model's own (RoPE
  at absolute positions), unlike StreamingLLM's cache re-indexing. Loss on positions ≥ 16.

Seen while writing this: per-layer mean sink score 0.03–0.12 in layers 0–2 and 10–11, 0.26–0.82
elsewhere; the same with and without BOS.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="interp_attention_sinks",
    paper="interp",
    statement=(
        "“We observe that … a surprisingly large amount of attention score is allocated to the initial tokens, "
        "irrespective of their relevance to the language modeling task” (§3.1); “window attention … fails when "
        "the text length surpasses the cache size … keeping the KV of initial tokens will largely recover the "
        "performance of window attention” (§3.1, Table 1)."
    ),
    source=Source(title="Efficient Streaming Language Models with Attention Sinks", arxiv="2309.17453", version="v4",
                  where="§3.1, Fig. 2 (attention maps), Table 1 (window vs 4 sinks + window)"),
    paper_value="Llama-2-13B, PG19, cache 1024: window (0+1024) PPL 5158.07; 4 sinks + 1020 window PPL 5.40 (Table 1)",
    prediction=(
        "In layers ≥ 2, > 1/2 of the heads put > 0.2 of their attention on position 0 of prose without BOS, while "
        "mass on position 1 stays < 0.05 on average; window-8 attention raises the loss by > 1 nat and "
        "4 sinks + window-8 recover > 70 % of that rise."
    ),
    metric="sink score per head; loss (nats/token, positions ≥ 16) under full / window-8 / 4 sinks + window-8 attention",
    tolerance="fraction of heads (layers ≥ 2) with sink > 0.2 ≥ 0.5; mean mass on pos 1 < 0.05; Δ_window > 1; recovery > 0.7",
    tolerance_why=(
        "No randomness (fixed text, fixed model): thresholds were written before running. The seed sweep "
        "(fixtures/calibration/interp_attention_sinks.json, seeds 0–4) only confirms determinism: every value has "
        "std 0 — deep-head fraction 0.857, mass on position 1 0.011, window rise 2.65 nats, recovery 0.91 — so no "
        "further seeds are needed. Recalibrated after moving to the shared smollm2 fixture: same values; fresh "
        "seeds 100–104 (fixtures/calibration/interp_attention_sinks.fresh.json) identical, 5/5 passed."
    ),
    tier="quick",
    tags=("real_model",),
    calibration="fixtures/calibration/interp_attention_sinks.json",
    status="confirmed",
)

SEQ, BATCH, WINDOW, SINKS, SKIP = 64, 4, 8, 4, 16


def _window_hooks(n_layers, T, window, sinks):
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    keep = (k <= q) & ((q - k < window) | (k < sinks))

    def fn(scores, hook):  # (B, H, T_q, T_k)
        return scores.masked_fill(~keep, torch.finfo(scores.dtype).min)

    return [(f"blocks.{l}.attn.hook_attn_scores", fn) for l in range(n_layers)]


@pytest.fixture(scope="module")
def measured(smollm2):
    from labcore.interp import heads
    from labcore.interp.readout import n_layers
    from labcore.pretrained.corpus import load_domain

    model, tok, load_seconds = smollm2.model, smollm2.tokenizer, smollm2.load_seconds
    L = n_layers(model)
    tokens = load_domain("prose", tok).eval_blocks(SEQ)[:BATCH]
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]

    def loss(hooks=()):
        with torch.no_grad(), model.hooks(list(hooks)):
            logits = model(tokens)
        lt = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
        return float(lt.view(BATCH, -1)[:, SKIP:].mean())

    _, cache = model.run_with_cache(tokens, names_filter=names)
    sink = torch.stack([heads.attention_sink_score(cache[n]) for n in names])  # (L, H)
    pos1 = torch.stack([cache[n][:, :, 2:, 1].double().mean((0, 2)) for n in names])  # mass on key 1, queries ≥ 2
    example = {l: cache[names[l]][0].float().mean(0).numpy() for l in (0, L // 2, L - 1)}
    del cache
    out = {"load_seconds": load_seconds, "sink": sink, "pos1": pos1, "example": example, "first_tokens":
           [tok.decode(t) for t in tokens[:, 0]],
           "full": loss(), "window": loss(_window_hooks(L, SEQ, WINDOW, 0)),
           "sinks": loss(_window_hooks(L, SEQ, WINDOW, SINKS))}
    return out


def test_attention_sinks(lab, measured):
    m = measured
    sink, pos1 = m["sink"].numpy(), m["pos1"].numpy()
    deep = sink[2:]
    frac = float((deep > 0.2).mean())
    rise = m["window"] - m["full"]
    recovery = (m["window"] - m["sinks"]) / rise if rise > 0 else float("nan")
    lab.record(load_seconds=m["load_seconds"], sink_per_layer=sink.mean(1).round(3).tolist(),
               pos1_per_layer=pos1.mean(1).round(3).tolist(), frac_heads_sink_gt_0_2=frac,
               mean_sink_deep=float(deep.mean()), mean_pos1_deep=float(pos1[2:].mean()),
               first_tokens=m["first_tokens"], loss_full=m["full"], loss_window=m["window"],
               loss_sinks_window=m["sinks"], window_rise=rise, sink_recovery=recovery)

    fig, axes = plt.subplots(1, 5, figsize=(19, 3.8))
    x = np.arange(sink.shape[0])
    axes[0].plot(x, sink.mean(1), "o-", label="mass on position 0 (sink)")
    axes[0].fill_between(x, sink.min(1), sink.max(1), alpha=0.2)
    axes[0].plot(x, pos1.mean(1), "s-", label="control: mass on position 1")
    axes[0].set(xlabel="layer", ylabel="attention share (mean over heads, band: min–max)",
                title="SmolLM2: first-token attention, prose without BOS")
    axes[0].legend(fontsize=7)
    for ax, (l, pat) in zip(axes[1:4], m["example"].items()):
        ax.imshow(pat ** 0.5, cmap="viridis")
        ax.set(title=f"layer {l}, mean over heads (√ scale)", xlabel="key", ylabel="query")
    names = ["full", f"window {WINDOW}", f"{SINKS} sinks + window {WINDOW}"]
    axes[4].bar(names, [m["full"], m["window"], m["sinks"]], color=["C0", "C3", "C2"])
    axes[4].set(ylabel=f"loss, positions ≥ {SKIP} (nats)", title="StreamingLLM on 64 tokens")
    axes[4].tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    lab.savefig(fig, "attention_sinks")

    assert frac >= 0.5, f"only {frac:.2f} of the heads in layers ≥ 2 put > 0.2 on position 0"
    # control: an equally ordinary token one step later is not a sink
    assert pos1[2:].mean() < 0.05, f"mass on position 1 is {pos1[2:].mean():.3f}: not specific to the first token"
    assert rise > 1.0, f"window attention raised the loss by only {rise:.2f} nats ({m['full']:.2f} → {m['window']:.2f})"
    assert recovery > 0.7, f"4 sinks recover only {recovery:.2f} of the window's loss rise (→ {m['sinks']:.2f})"
