"""Induction heads form in a sudden phase change, together with in-context learning.

Lab notebook. Olsson et al. (2022) train small attention-only transformers and see, early in
training, a short window in which (a) the *in-context loss* — loss late in the context minus loss
early in the context — drops abruptly and (b) *induction heads* appear: heads that attend from a
token A to whatever followed an earlier A (…A B … A → attend to B) and copy it. One-layer
attention-only models never get the bump: an induction head needs two heads in series (a
previous-token head in layer 0 whose output the layer-1 head's keys read: K-composition).

Our version (one CPU core, ~30 s on an idle core; 40–55 s with the other core busy):
* model: glass-box GPT, attention-only (``mlp="none"``), 2 layers × 2 heads, d_model 32, RoPE,
  LayerNorm, untied unembedding; control: the same with 1 layer.
* data: 32-token sequences of uniform random tokens (V=64) whose last 2n tokens are a segment
  x of length n and its copy, n ∈ [6, 16] drawn per sequence (so the repeat offset varies and a
  fixed-offset positional head cannot solve it).
* in-context score (ICS): on 16 held-out sequences [x, x] (n=16), mean loss on the second copy
  minus mean loss on the first copy (nats; 0 before, ≪ 0 once the model copies).
* induction score: ``labcore.interp.heads`` — attention mass from a token in the second copy to
  the token after its first occurrence, best head in the last layer.
* ablation: zero the best induction head (``hook_z``), re-measure the ICS.

What we saw while writing this (seed 0, lr 3e-3): with learned positions and d=32 no induction
head formed in 2,000 steps (best layer-1 score 0.05); with RoPE the phase change is at steps
400–600: ICS −0.16 → −2.2 → −3.4 nats, induction score 0.10 → 0.71 → 0.88, and a previous-token
head (0.79) appears in layer 0 in the same window. With 1,000 steps seed 2 was caught mid-change
(half-way at step 950–975, ICS −1.4 at the end), so the run is 1,500 steps.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="interp_induction_heads_form",
    paper="interp",
    statement=(
        "“Transformer language models undergo a “phase change” early in training, during which "
        "induction heads form and simultaneously in-context learning improves dramatically.” "
        "(Argument 1; one-layer attention-only models show no such change.)"
    ),
    source=Source(title="In-context Learning and Induction Heads", arxiv="2209.11895", version="v1",
                  where="§Argument 1 (phase change), Fig. 'in-context learning score' per model size"),
    paper_value="qualitative: abrupt drop of in-context loss coinciding with induction-head formation, only for ≥ 2 layers",
    prediction=(
        "2-layer attention-only model: the ICS falls from ≈0 to < −2 nats within a few hundred steps, and the "
        "step where it crosses half its final value is within 100 steps of the step where the best layer-1 "
        "induction score crosses halfway to its final value (> 0.5). 1-layer model: best induction score "
        "< 0.2 and |ICS| < 0.5. Ablating the found head brings the ICS back above −0.5."
    ),
    metric=(
        "ICS = loss(2nd copy) − loss(1st copy), nats, 16 held-out [x, x] sequences, every 25 steps; induction score "
        "(labcore.interp.heads); the step of each half-way crossing; ICS after zeroing the head"
    ),
    tolerance="|step(ICS half) − step(induction half)| ≤ 100; final ICS ≤ −2; final score ≥ 0.5; ablated ICS ≥ −0.5; 1-layer score < 0.2, |ICS| < 0.5",
    tolerance_why=(
        "Evaluations are 25 steps apart, so ±100 steps is ±4 evaluations; the phase change itself takes ~75 steps. "
        "Bounds written before the seed sweep and kept. Table fixtures/calibration/interp_induction_heads_form.json, "
        "seeds 0–4, 5/5 passed: half-way gap 0–25 steps; ICS half-way step 600–1425 (so one seed changed phase "
        "just before the end); final ICS −3.81…−2.13; final score 0.56–0.95; ablated ICS +0.04…+0.30; 1-layer "
        "score 0.10–0.16, ICS −0.49…−0.27 (thin margin to |ICS| < 0.5). Fresh seeds 100–104 (lab calibrate interp "
        "--seeds 5 --start 100; table kept outside the tree): 3/5 passed. Seed 101 FAILED — no phase change within "
        "1,500 steps (final ICS −0.70, score 0.23, half-way gap 150; its 1-layer ICS −0.53 also crosses the control "
        "bound); seed 104 FAILED on the control alone: 1-layer ICS −0.62 (its 2-layer run passed). Over all 10 seeds "
        "the 1-layer ICS is −0.27…−0.62: the |ICS| < 0.5 bound, set from 2 seeds, sits inside the spread of the "
        "unigram-in-context gain. NEEDS MORE STEPS (≈ 2,500, over today's one-core budget) and a 1-layer bound "
        "argued from that gain (e.g. 2-layer ICS < 4× the 1-layer ICS) — a change made after seeing the data, to be "
        "confirmed on new fresh seeds. Until then the claim fails on 2 of 10 seeds and says so."
    ),
    tier="quick",
    calibration="fixtures/calibration/interp_induction_heads_form.json",
)

V, T, BATCH, STEPS, EVAL_EVERY, LR = 64, 32, 32, 1500, 25, 3e-3
D_MODEL, N_HEADS = 32, 2


def _batch(step, g):
    """Uniform random tokens whose last 2n positions are [x, x], n ∈ [6, 16] per row."""
    x = torch.randint(0, V, (BATCH, T), generator=g)
    n = torch.randint(6, T // 2 + 1, (BATCH,), generator=g)
    for i, k in enumerate(n.tolist()):
        x[i, T - k:] = x[i, T - 2 * k:T - k]
    return x[:, :-1], x[:, 1:]


def _ics(model, tokens, hooks=()):
    with torch.no_grad(), model.hooks(list(hooks)):
        logits = model(tokens)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    loss = loss.view(tokens.shape[0], -1)  # position p predicts token p+1
    half = tokens.shape[1] // 2
    return float(loss[:, half:].mean() - loss[:, :half - 1].mean()), float(loss[:, :half - 1].mean())


def _run(n_layers, seed, eval_tokens):
    from labcore.glassbox.model import GPT, GPTConfig
    from labcore.interp import heads
    from labcore.training.trainer import Every, TrainConfig, train

    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, n_ctx=T, d_model=D_MODEL, n_layers=n_layers, n_heads=N_HEADS,
                          mlp="none", positional="rope", tied_embeddings=False))

    def evaluate(step, m):
        scores = heads.head_scores(m, eval_tokens)
        ics, first = _ics(m, eval_tokens)
        return {"ics": ics, "first": first, "induction": scores["induction"].values[-1].tolist(),
                "previous_token": scores["previous_token"].values[0].tolist()}

    before = (0, evaluate(0, model.eval()))
    run = train(model, _batch, TrainConfig(steps=STEPS, lr=LR, seed=seed, track_update_ratio=False),
                callbacks=[Every(EVAL_EVERY, evaluate, "eval")])
    evals = [before] + run.evals["eval"]
    return model, run, evals


def _half_step(steps, values, final, start):
    """First step at which the curve has covered half the way from its start to its final value."""
    mid = (start + final) / 2
    for s, v in zip(steps, values):
        if (final - start) * (v - mid) >= 0:
            return s
    return None


@pytest.fixture(scope="module")
def runs(lab_seed):
    from labcore.interp import heads

    eval_tokens = heads.repeated_random_tokens(16, T // 2, V, torch.Generator().manual_seed(10_000 + lab_seed))
    two = _run(2, lab_seed, eval_tokens)
    one = _run(1, lab_seed, eval_tokens)
    return {"eval_tokens": eval_tokens, 2: two, 1: one}


def _plot(lab, runs, head, t_ics, t_ind):
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for L, style in ((2, "-"), (1, "--")):
        _, run, evals = runs[L]
        steps = [s for s, _ in evals]
        axes[0].plot(np.arange(1, len(run.metrics["loss"]) + 1), run.metrics["loss"], style, lw=0.6, label=f"{L} layer")
        axes[1].plot(steps, [e["ics"] for _, e in evals], style + "o", ms=2, label=f"{L} layer")
        axes[2].plot(steps, [max(e["induction"]) for _, e in evals], style + "o", ms=2, label=f"{L} layer: best induction")
    steps = [s for s, _ in runs[2][2]]
    axes[2].plot(steps, [max(e["previous_token"]) for _, e in runs[2][2]], ":", label="2 layer: best prev-token (L0)")
    for ax in axes[:3]:
        ax.axvline(t_ics, color="C3", lw=0.8, alpha=0.6)
        ax.axvline(t_ind, color="C2", lw=0.8, alpha=0.6)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0].set(ylabel="training loss (nats)", title="loss curve")
    axes[1].set(ylabel="loss(2nd copy) − loss(1st copy)", title="in-context score")
    axes[2].set(ylabel="score", title="head scores (lines: half-way steps)")
    model = runs[2][0]
    _, cache = model.run_with_cache(runs["eval_tokens"][:1], names_filter=[f"blocks.1.attn.hook_pattern"])
    axes[3].imshow(cache["blocks.1.attn.hook_pattern"][0, head].numpy(), cmap="viridis")
    axes[3].set(title=f"L1 H{head} attention on [x, x] (n=16)", xlabel="key", ylabel="query")
    fig.tight_layout()
    lab.savefig(fig, "phase_change")


def test_induction_head_forms_with_in_context_learning(lab, runs):
    model, run, evals = runs[2]
    steps = [s for s, _ in evals]
    ics = [e["ics"] for _, e in evals]
    ind = [max(e["induction"]) for _, e in evals]
    head = int(np.argmax(evals[-1][1]["induction"]))
    t_ics = _half_step(steps, ics, ics[-1], ics[0])
    t_ind = _half_step(steps, ind, ind[-1], ind[0])
    found = [h for h, v in enumerate(evals[-1][1]["induction"]) if v >= 0.3] or [head]
    ablated, _ = _ics(model, runs["eval_tokens"], hooks=[hk for h in found for hk in _zero(1, h)])
    single = {h: _ics(model, runs["eval_tokens"], hooks=_zero(1, h))[0] for h in range(N_HEADS)}
    one_ics, one_ind = runs[1][2][-1][1]["ics"], max(runs[1][2][-1][1]["induction"])
    lab.record(final_ics=ics[-1], final_induction=ind[-1], head=head, step_ics_half=t_ics, step_induction_half=t_ind,
               step_gap=abs(t_ics - t_ind), induction_heads=found, ablated_ics=ablated, single_head_ablated_ics=single,
               final_prev_token=max(evals[-1][1]["previous_token"]), one_layer_ics=one_ics, one_layer_induction=one_ind,
               train_seconds=run.seconds + runs[1][1].seconds,
               curve=[(s, round(a, 3), round(b, 3)) for s, a, b in zip(steps, ics, ind)])
    _plot(lab, runs, head, t_ics, t_ind)

    assert ics[-1] <= -2.0 and ind[-1] >= 0.5, f"no induction: final ICS {ics[-1]:.2f} nats, best score {ind[-1]:.2f}"
    assert abs(t_ics - t_ind) <= 100, f"ICS halfway at step {t_ics}, induction score halfway at {t_ind}"
    assert ablated >= -0.5, f"zeroing L1 heads {found} leaves ICS {ablated:.2f} (was {ics[-1]:.2f})"
    # controls that must come out the other way: one layer cannot form an induction head
    assert one_ind < 0.2 and abs(one_ics) < 0.5, f"1-layer model: induction {one_ind:.2f}, ICS {one_ics:.2f}"


def _zero(layer, head):
    from labcore.measures.probes import zero_head

    return zero_head(layer, head)
