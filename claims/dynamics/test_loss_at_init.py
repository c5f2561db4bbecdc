"""Loss at init ≈ ln V: the first number of every training run, and what it tells us.

Lab notebook. A freshly initialised language model should not know anything, so its next-token
distribution should be close to uniform over the V tokens and its cross-entropy close to ln V nats.
The glass-box GPT at its default init (weights N(0, 0.02²), tied unembedding after a final
LayerNorm) has logits of std ≈ 0.02·√d_model = 0.16, so the expected excess over ln V is
≈ σ²/2 ≈ 0.013 nats (second-order expansion of log-sum-exp around uniform logits).

Control, the "hockey stick": the same model at init std 1.0 has logits of std ≈ √d_model = 8 —
confidently wrong — so its step-0 loss is many nats above ln V and the first steps of training are
spent only on shrinking the logits (a steep drop), not on learning the task.

Source note: Karpathy's recipe is a blog post, not on arXiv, and this lab's Source requires an
arXiv-shaped id; ``0000.00000`` is an explicit placeholder listed in claims/dynamics/paper.toml,
and ``where`` gives the URL.

Prediction (written before the run): default init: |L₀ − ln V| ≤ 0.05 nats (ln 272 = 5.606);
init std 1.0: L₀ − ln V ≥ 5 nats, and its loss falls by more than half of its excess within the
first 20 steps (the hockey stick), while the default init's first-20-step drop is < 0.5 nats.
Seed 0: excess 0.017 (default) and 18.7 (std 1.0) as predicted; but the default run ALSO drops
2.8 nats in 20 steps (it learns that only the 16 value tokens are ever targets: ln 272 → ln 16),
so "drop in 20 steps" does not separate the two. The hockey stick is therefore measured as wasted
steps: steps until the loss first falls below ln 16 + 0.3 (seed 0: 13 default vs ~70 at std 1.0),
asserted ≥ 2× — a rule chosen after seeing seed 0, exploratory until the fresh seeds.
Seeds 0–3: default excess −0.014, 0.017, 0.094, 0.064 — the ±0.05 prediction failed on two seeds.
The per-seed spread is an init effect, not batch noise: the query's final residual is much the same
for every example, so the 16 value logits are shifted together by the draw of the unembedding
(their mean has s.d. of order σ_logit/4 ≈ 0.04, and the shape of h adds more). The tolerance is
therefore |L₀ − ln V| ≤ 0.2 nats (≈ σ_logit, still 15× below the control's excess) — exploratory
until fresh seeds 100–104 pass (they did, 5/5: excess −0.033…0.076).
"""

import math
from functools import partial

import matplotlib.pyplot as plt
import numpy as np

from labcore import GPT, GPTConfig
from labcore.notebook.claims import Claim, Source
from labcore.tasks.pair_recall import PairRecallTask
from labcore.training.trainer import TrainConfig, seeded_model, train

CLAIM = Claim(
    id="dynamics_loss_at_init",
    paper="dynamics",
    statement=(
        "“verify loss @ init. Verify that your loss starts at the correct loss value. E.g. if you "
        "initialize your final layer correctly you should measure -log(1/n_classes) on a softmax at "
        "initialization.”"
    ),
    source=Source(
        title="A Recipe for Training Neural Networks (A. Karpathy, blog, 2019; not on arXiv — placeholder id)",
        arxiv="0000.00000", version="v1",
        where="karpathy.github.io/2019/04/25/recipe/, §2 'Set up the end-to-end training/evaluation skeleton'",
    ),
    paper_value="L₀ = −log(1/V) = ln V",
    prediction=(
        "Default init (std 0.02): |L₀ − ln V| ≤ 0.05 nats. Control init std 1.0: L₀ ≥ ln V + 5 and a hockey "
        "stick (more than half of the excess gone in 20 steps)."
    ),
    metric="mean next-token loss at step 0 on a batch of 512 pair-recall sequences, minus ln V (V = 272)",
    tolerance="default: |L₀ − ln V| ≤ 0.2; control: L₀ − ln V ≥ 3 and steps-to-(ln 16 + 0.3) ≥ 2× the default's",
    tolerance_why=(
        "Theory: mean excess ≈ σ_logit²/2 ≈ 0.013 nats at std 0.02, d_model 64, but per init the target-value "
        "logits shift together; seeds 0–3 gave −0.014…0.094 (the first guess, ±0.05, failed twice), so 0.2 "
        "≈ σ_logit ≈ 2× the largest seen. Control bounds: theory puts the std-1.0 excess near "
        "σ·√(2 ln V) ≈ 27 nats, so 3 is a wide margin. lab calibrate seeds 0–4 in the calibration table."
        " lab calibrate seeds 0–4: excess −0.012…0.088 (median 0.017); std-1.0 excess 16.9–19.0; wasted-steps ratio 5.2–5.7 (13 vs 67–74 steps)."
    ),
    tier="quick",
    calibration="fixtures/calibration/dynamics_loss_at_init.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

TASK = PairRecallTask(n_keys=16, n_values=16, n_pairs=8)
STEPS, BATCH = 150, 128


def config(init_std: float) -> GPTConfig:
    return GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, d_model=64, n_layers=1, n_heads=4,
                     init_std=init_std)


def run(init_std: float, seed: int) -> np.ndarray:
    model = seeded_model(partial(GPT, config(init_std)), seed)
    res = train(model, TASK.batch_fn(BATCH), TrainConfig(steps=STEPS, lr=3e-3, seed=seed,
                                                          track_update_ratio=False, progress=False))
    return res.metrics["loss"]


def step0_loss(model, seed: int) -> float:
    import torch
    import torch.nn.functional as F

    tokens, targets = TASK.sample(512, torch.Generator().manual_seed(10_000 + seed))
    model.eval()
    with torch.no_grad():
        logits = model(tokens)
    return float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100))


def first_below(curve: np.ndarray, level: float) -> int:
    """First step at which the loss is below ``level`` (len(curve) if never)."""
    hits = np.flatnonzero(curve < level)
    return int(hits[0]) if len(hits) else len(curve)


def test_loss_at_init_is_ln_v(lab):
    ln_v = math.log(TASK.vocab_size)
    curves, l0 = {}, {}
    for std in (0.02, 1.0):
        l0[std] = step0_loss(seeded_model(partial(GPT, config(std)), lab.seed), lab.seed)
        curves[std] = run(std, lab.seed)
    excess = {s: l0[s] - ln_v for s in l0}
    drop20 = {s: float(curves[s][0] - curves[s][20]) for s in curves}
    steps_to = {s: first_below(curves[s], TASK.chance_loss + 0.3) for s in curves}
    hockey = steps_to[1.0] / steps_to[0.02]
    lab.record(ln_v=ln_v, loss0_default=l0[0.02], loss0_large_init=l0[1.0], excess_default=excess[0.02],
               excess_large_init=excess[1.0], drop20_default=drop20[0.02], drop20_large_init=drop20[1.0],
               steps_to_unigram_default=steps_to[0.02], steps_to_unigram_large_init=steps_to[1.0],
               wasted_steps_ratio=hockey, final_default=float(curves[0.02][-10:].mean()),
               final_large_init=float(curves[1.0][-10:].mean()))

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(curves[0.02], label="init std 0.02 (default)")
    ax.plot(curves[1.0], label="init std 1.0 (too large)", color="C3")
    ax.axhline(ln_v, color="k", ls="--", lw=1, label=f"ln V = {ln_v:.2f}")
    ax.axhline(TASK.chance_loss, color="gray", ls=":", lw=1, label="chance over values (ln 16)")
    ax.set(xlabel="step", ylabel="loss (nats)", yscale="log", title="Loss at init: ln V vs the hockey stick")
    ax.legend(fontsize=8)
    lab.savefig(fig, "loss_curves_init")

    assert abs(excess[0.02]) <= 0.2, f"default init: L₀ − ln V = {excess[0.02]:.4f}, not within ±0.2"
    # Control: the same measurement must reject a badly scaled init.
    assert excess[1.0] >= 3, f"init std 1.0: L₀ − ln V = {excess[1.0]:.2f} < 3 — the check cannot see a bad init"
    assert hockey >= 2, f"init std 1.0 reaches ln 16 + 0.3 after {steps_to[1.0]} steps vs {steps_to[0.02]}: no hockey stick"
