"""Induction heads form in a sudden phase change, together with in-context learning.

Lab notebook. Olsson et al. (2022) train small attention-only transformers and see, early in
training, a short window in which (a) the *in-context loss* — loss late in the context minus loss
early in the context — drops abruptly and (b) *induction heads* appear: heads that attend from a
token A to whatever followed an earlier A (…A B … A → attend to B) and copy it. One-layer
attention-only models never get the bump: an induction head needs two heads in series (a
previous-token head in layer 0 whose output the layer-1 head's keys read: K-composition).

Our version (one CPU core; ~35 s of CPU for both models):
* model: glass-box GPT, attention-only (``mlp="none"``), 2 layers × 2 heads, d_model 32, RoPE,
  LayerNorm, untied unembedding, AdamW lr 3e-3, batch 32, 2,500 steps (the fast trainer path,
  bit-identical updates on the CPU); control: the same with 1 layer.
* data: 32-token sequences of uniform random tokens (V=64) whose last 2n tokens are a segment
  x of length n and its copy, n ∈ [6, 16] drawn per sequence (so the repeat offset varies and a
  fixed-offset positional head cannot solve it).
* in-context score (ICS): on 16 held-out sequences [x, x] (n=16), mean loss on the second copy
  minus mean loss on the first copy (nats; 0 before, ≪ 0 once the model copies).
* induction score: ``labcore.interp.heads`` on 64 held-out rows of the *training distribution*
  (offsets vary), best head of the last layer. On a fixed-offset [x, x] a head attending by
  position alone could score 1; with varied offsets ``heads.positional_ceiling`` gives the best
  score any position-only pattern can reach on these rows (≈ 0.15).
* ablation: zero the layer-1 heads with induction score ≥ 0.3 (``hook_z``), re-measure the ICS.

The 1-layer control, from the mechanism. A 1-layer attention-only model's score for key k depends
on the query token, key k's own token and the offset — never on the token *before* k. So it
cannot find "the key after an earlier copy of me" except by guessing its offset: (i) its induction
score is at most the positional ceiling of the eval rows; (ii) on the training distribution its
loss is at least that of the best *position-only copier*, the Bayes predictor that knows the
query position q and the training law of n but not where the repeat is:
p(t) = Σ_n P(n) [q+1 in the 2nd copy] 1[token(q+1−n) = t] + P(q+1 not a copy) / V
(``_position_only_loss``, exact, no fitting). The 2-layer model must beat that bound — that is the
in-context gain only composition can buy.

History. The first version (1,500 steps) failed on 2 of 10 seeds: seed 101 changed phase after
step 1,500, and seed 104's 1-layer ICS (−0.62) crossed a |ICS| < 0.5 control bound that had been
set from 2 seeds: a 1-layer model does gain 0.3–0.6 nats on [x, x] by copying at guessed offsets
(n = 16 is one of the training offsets). Those two were replaced by (i) and (ii); the ICS of the
1-layer model is still recorded.

Seen while rewriting (2,500 steps, seeds 0–4 and 100–104 in a pre-run, other eval rows): the
2-layer phase change at steps ~600–1,900 (seed 101 first sat on a −0.7-nat ICS plateau —
positional copying, varied-offset score 0.18 — then jumped at step ~1,800), final varied-offset
induction score 0.72–0.88, loss 3.02–3.26 nats vs the position-only bound 3.54–3.57; 1-layer
score 0.09–0.12 under ceilings 0.13–0.17, loss 4.06–4.08 (it never gets near the bound).
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
        "2-layer attention-only model: the ICS falls from ≈0 to < −2 nats, ≥ 50 % of the fall within some 500 steps "
        "(a fifth of the run), and the step where it crosses half its final value is within 100 steps of the step where "
        "the best layer-1 induction score crosses halfway to its final value (> 0.5). Its loss on the training "
        "distribution is below the position-only copier's. Ablating the found head brings the ICS back above −0.5. "
        "1-layer model: induction score ≤ the positional ceiling of the eval rows, loss ≥ the position-only copier's."
    ),
    metric=(
        "ICS = loss(2nd copy) − loss(1st copy), nats, 16 held-out [x, x] (n=16), every 25 steps; induction score "
        "(labcore.interp.heads) on 64 held-out training-distribution rows; half-way crossing steps; ICS after zeroing "
        "the head; mean loss on 256 held-out training-distribution rows vs the position-only Bayes copier's"
    ),
    tolerance=(
        "|step(ICS half) − step(induction half)| ≤ 100; ≥ 50 % of the ICS fall within 500 steps; final ICS ≤ −2; final score "
        "≥ 0.5; 2-layer loss < position-only bound; ablated ICS ≥ −0.5; 1-layer score ≤ positional ceiling, 1-layer "
        "loss ≥ position-only bound"
    ),
    tolerance_why=(
        "Evaluations are 25 steps apart, so ±100 steps is ±4 evaluations. The 1-layer bounds are not tuned: both are "
        "ceilings of what a head that cannot read the previous token of a key can do (module docstring), computed "
        "from the eval rows. They replace the earlier |ICS| < 0.5 bound (set from 2 seeds; seed 104 crossed it). "
        "Seeds 0–4 (fixtures/calibration/interp_induction_heads_form.json): 5/5 passed; half-way gap 0–50 steps, "
        "phase change (ICS half) at steps 600–1,450, 83–93 % of the ICS fall within 500 steps, final ICS −3.87…−2.99, "
        "score 0.77–0.87, ablated ICS +0.09…+0.34; 2-layer loss 0.35–0.57 nats below the position-only copier; "
        "1-layer score 0.09–0.10 vs ceilings 0.20–0.23, 1-layer loss 0.50–0.53 nats above the copier. Fresh seeds "
        "100–104 (first confirmation run): 5/5 passed; gap 0–25, ICS half at 750–1,775 (seed 101, the late one), 78–97 % within "
        "500 steps, score 0.74–0.86, 2-layer loss 0.26–0.54 below the copier; 1-layer score 0.09–0.12 vs ceilings "
        "0.20–0.26, loss ≥ 0.40 above it (1-layer ICS down to −0.88: the old |ICS| < 0.5 bound would have failed). "
        "Caveat: seeds 100–104 are not virgin — the previous version failed on 101/104, and the 500-step 'sudden' "
        "window (papers.md §5.1's 'half the drop within a fifth of the steps') was picked after seeing seed 101's "
        "two-stage curve (a −0.7 positional plateau, then the jump at step ~1,800) in a pre-run. So the "
        "confirmation was rerun on untouched seeds 200–204: 5/5 passed; .fresh.json now holds that run (the "
        "100–104 numbers above are from the run it replaced)."
    ),
    tier="quick",
    status="confirmed",
    calibration="fixtures/calibration/interp_induction_heads_form.json",
)

V, T, BATCH, STEPS, EVAL_EVERY, LR = 64, 32, 32, 2500, 25, 3e-3
D_MODEL, N_HEADS = 32, 2
N_MIN, N_MAX = 6, T // 2  # repeat half-length range of the training data
SUDDEN_WINDOW = STEPS // 5  # "sudden": ≥ half the ICS fall within a fifth of the run (papers.md §5.1)
SCORE_ROWS, LOSS_ROWS = 64, 256  # held-out training-distribution rows: induction score, loss bound


def _batch(step, g, rows=BATCH):
    """Uniform random tokens whose last 2n positions are [x, x], n ∈ [6, 16] per row."""
    x = torch.randint(0, V, (rows, T), generator=g)
    n = torch.randint(N_MIN, N_MAX + 1, (rows,), generator=g)
    for i, k in enumerate(n.tolist()):
        x[i, T - k:] = x[i, T - 2 * k:T - k]
    return x[:, :-1], x[:, 1:]


def _position_only_loss(tokens):
    """Mean loss of the Bayes copier that knows q and P(n) but not where the repeat is. tokens (B, T)."""
    n_values = list(range(N_MIN, N_MAX + 1))
    losses = []
    for q in range(T - 1):  # input position q predicts token q + 1
        target, p = tokens[:, q + 1], torch.zeros(tokens.shape[0], dtype=torch.float64)
        copies = [n for n in n_values if q + 1 >= T - n]  # q + 1 lies in the 2nd copy of half length n
        for n in copies:
            p += (tokens[:, q + 1 - n] == target).double() / len(n_values)
        p += (1 - len(copies) / len(n_values)) / V  # not a copy: a uniform token
        losses.append(-p.log())
    return float(torch.stack(losses).mean())


def _model_loss(model, tokens):
    with torch.no_grad():
        logits = model(tokens[:, :-1])
    return float(F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()))


def _ics(model, tokens, hooks=()):
    with torch.no_grad(), model.hooks(list(hooks)):
        logits = model(tokens)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    loss = loss.view(tokens.shape[0], -1)  # position p predicts token p+1
    half = tokens.shape[1] // 2
    return float(loss[:, half:].mean() - loss[:, :half - 1].mean()), float(loss[:, :half - 1].mean())


def _run(n_layers, seed, data, eval_every):
    from labcore.glassbox.model import GPT, GPTConfig
    from labcore.interp import heads
    from labcore.training.trainer import Every, TrainConfig, train

    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, n_ctx=T, d_model=D_MODEL, n_layers=n_layers, n_heads=N_HEADS,
                          mlp="none", positional="rope", tied_embeddings=False))
    last = f"blocks.{n_layers - 1}.attn.hook_pattern"

    def evaluate(step, m):
        scores = heads.head_scores(m, data["score_rows"])
        ics, first = _ics(m, data["xx"])
        _, cache = m.run_with_cache(data["xx"][:1], names_filter=[last])
        return {"ics": ics, "first": first, "induction": scores["induction"].values[-1].tolist(),
                "previous_token": scores["previous_token"].values[0].tolist(), "pattern": cache[last][0].numpy()}

    before = (0, evaluate(0, model.eval()))
    cfg = TrainConfig(steps=STEPS, lr=LR, seed=seed, track_update_ratio=False, sync_every=eval_every,
                      stats_every=STEPS + 1)  # fast path: no per-step host reads, no Adam statistics
    run = train(model, _batch, cfg, callbacks=[Every(eval_every, evaluate, "eval")])
    return model, run, [before] + run.evals["eval"]


def _steepest_share(steps, values, window):
    """Largest share of the total fall (start → final) that happens within ``window`` steps."""
    total = values[0] - values[-1]
    return max((values[i] - values[j]) / total for i in range(len(steps)) for j in range(i, len(steps))
               if steps[j] - steps[i] <= window)


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

    g = torch.Generator().manual_seed(20_000 + lab_seed)  # held-out rows: their own stream
    inputs, targets = _batch(0, g, LOSS_ROWS)
    rows = torch.cat([inputs, targets[:, -1:]], 1)  # whole sequences (LOSS_ROWS, T)
    data = {"xx": heads.repeated_random_tokens(16, T // 2, V, torch.Generator().manual_seed(10_000 + lab_seed)),
            "score_rows": rows[:SCORE_ROWS, :-1], "loss_rows": rows}
    data["ceiling"] = heads.positional_ceiling(heads.target_masks(data["score_rows"])["induction"])
    data["bound"] = _position_only_loss(rows)
    return {"data": data, 2: _run(2, lab_seed, data, EVAL_EVERY), 1: _run(1, lab_seed, data, 4 * EVAL_EVERY)}


def _plot(lab, runs, head, t_ics, t_ind):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for L, style in ((2, "-"), (1, "--")):
        _, run, evals = runs[L]
        steps = [s for s, _ in evals]
        axes[0].plot(np.arange(1, len(run.metrics["loss"]) + 1), run.metrics["loss"], style, lw=0.6, label=f"{L} layer")
        axes[1].plot(steps, [e["ics"] for _, e in evals], style + "o", ms=2, label=f"{L} layer")
        axes[2].plot(steps, [max(e["induction"]) for _, e in evals], style + "o", ms=2, label=f"{L} layer: best induction")
    steps = [s for s, _ in runs[2][2]]
    axes[2].plot(steps, [max(e["previous_token"]) for _, e in runs[2][2]], ":", label="2 layer: best prev-token (L0)")
    axes[2].axhline(runs["data"]["ceiling"], color="k", lw=0.6, ls="-.", label="position-only ceiling")
    axes[0].axhline(runs["data"]["bound"], color="k", lw=0.6, ls="-.", label="position-only copier")
    for ax in axes:
        ax.axvline(t_ics, color="C3", lw=0.8, alpha=0.6)
        ax.axvline(t_ind, color="C2", lw=0.8, alpha=0.6)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0].set(ylabel="training loss (nats)", title="loss curve")
    axes[1].set(ylabel="loss(2nd copy) − loss(1st copy)", title="in-context score on [x, x]")
    axes[2].set(ylabel="score", title="head scores, varied offsets (lines: half-way)")
    fig.tight_layout()
    lab.savefig(fig, "phase_change")
    _plot_patterns(lab, runs[2][2], head, t_ind)


def _plot_patterns(lab, evals, head, t_ind):
    """The induction head's attention on one [x, x] at five moments: how the pattern forms."""
    steps = [s for s, _ in evals]
    wanted = [0, t_ind - 100, t_ind, t_ind + 100, steps[-1]]
    picks = [min(range(len(steps)), key=lambda i: abs(steps[i] - w)) for w in wanted]
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.2))
    for ax, i in zip(axes, picks):
        ax.imshow(evals[i][1]["pattern"][head], cmap="viridis", vmin=0, vmax=1)
        ax.set(title=f"step {steps[i]}: L1 H{head}", xlabel="key", ylabel="query")
    fig.suptitle("layer-1 head on [x, x] (n=16): the induction stripe is the diagonal q − 15")
    fig.tight_layout()
    lab.savefig(fig, "pattern_over_training")


def _control(lab, runs):
    """The 1-layer model against the two position-only ceilings (module docstring)."""
    model, _, evals = runs[1]
    data = runs["data"]
    score, loss = max(evals[-1][1]["induction"]), _model_loss(model, data["loss_rows"])
    lab.record(one_layer_ics=evals[-1][1]["ics"], one_layer_induction=score, one_layer_loss=loss,
               positional_ceiling=data["ceiling"], position_only_loss=data["bound"],
               one_layer_score_margin=data["ceiling"] - score, one_layer_loss_margin=loss - data["bound"])
    return score, loss


def test_induction_head_forms_with_in_context_learning(lab, runs):
    model, run, evals = runs[2]
    steps = [s for s, _ in evals]
    ics = [e["ics"] for _, e in evals]
    ind = [max(e["induction"]) for _, e in evals]
    head = int(np.argmax(evals[-1][1]["induction"]))
    t_ics, t_ind = _half_step(steps, ics, ics[-1], ics[0]), _half_step(steps, ind, ind[-1], ind[0])
    sudden = _steepest_share(steps, ics, SUDDEN_WINDOW)
    found = [h for h, v in enumerate(evals[-1][1]["induction"]) if v >= 0.3] or [head]
    ablated, _ = _ics(model, runs["data"]["xx"], hooks=[hk for h in found for hk in _zero(1, h)])
    single = {h: _ics(model, runs["data"]["xx"], hooks=_zero(1, h))[0] for h in range(N_HEADS)}
    loss, bound = _model_loss(model, runs["data"]["loss_rows"]), runs["data"]["bound"]
    one_ind, one_loss = _control(lab, runs)
    lab.record(final_ics=ics[-1], final_induction=ind[-1], head=head, step_ics_half=t_ics, step_induction_half=t_ind,
               step_gap=abs(t_ics - t_ind), ics_share_in_500_steps=sudden, induction_heads=found, ablated_ics=ablated,
               single_head_ablated_ics=single, final_prev_token=max(evals[-1][1]["previous_token"]),
               two_layer_loss=loss, two_layer_gain_over_bound=bound - loss,
               train_seconds=run.seconds + runs[1][1].seconds,
               curve=[(s, round(a, 3), round(b, 3)) for s, a, b in zip(steps, ics, ind)])
    _plot(lab, runs, head, t_ics, t_ind)

    assert ics[-1] <= -2.0 and ind[-1] >= 0.5, f"no induction: final ICS {ics[-1]:.2f} nats, best score {ind[-1]:.2f}"
    assert abs(t_ics - t_ind) <= 100, f"ICS halfway at step {t_ics}, induction score halfway at {t_ind}"
    assert sudden >= 0.5, f"not sudden: the steepest {SUDDEN_WINDOW} steps hold {sudden:.0%} of the ICS fall"
    assert loss < bound, f"2-layer loss {loss:.3f} does not beat the position-only copier's {bound:.3f}"
    assert ablated >= -0.5, f"zeroing L1 heads {found} leaves ICS {ablated:.2f} (was {ics[-1]:.2f})"
    # controls that must come out the other way: one layer cannot compose, so it cannot beat position
    assert one_ind <= runs["data"]["ceiling"], (
        f"1-layer induction score {one_ind:.3f} above the position-only ceiling {runs['data']['ceiling']:.3f}")
    assert one_loss >= bound, f"1-layer loss {one_loss:.3f} beats the position-only copier's {bound:.3f}"


def _zero(layer, head):
    from labcore.measures.probes import zero_head

    return zero_head(layer, head)
