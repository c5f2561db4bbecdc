"""Logit lens and tuned lens on SmolLM2: how early does the residual stream know the next token?

Lab notebook. Belrose et al. (2023) read the residual stream of layer l as a next-token
distribution in two ways: the *logit lens* (final norm + unembedding applied to h_l directly) and
the *tuned lens* (first an affine translator h ↦ h + A_l h + b_l, trained per layer). They report
KL(final ‖ lens_l) per layer: the tuned lens is below the logit lens everywhere and falls steadily
with depth, while the logit lens is unreliable on models other than GPT-2 (BLOOM, OPT, Pythia: its
early-layer predictions are "biased" and far from the final distribution).

Our version (SmolLM2-135M, fp32, prose from fixtures/corpus; the shared ``smollm2`` fixture):
* held out: 4 windows × 32 tokens of the prose *eval* split; training: 24 random 32-token windows of
  the prose *train* split (offsets drawn from --lab-seed).
* logit lens KL at all 31 layer indices (resid_pre 0…29, final); translators at every 3rd layer
  (0, 3, …, 27), 10 layers.
* the tuned lens as Belrose et al. train it: translators start at the identity (A = 0, b = 0, i.e.
  the logit lens) and Adam minimises Σ_l KL(final ‖ lens_l) on the training tokens
  (``labcore.interp.lenses.train_translators_kl``), 15 steps × 64 random tokens, lr 1e-3. Their
  recipe is 250 steps × 2^18 tokens; one step here (10 layers, 64 tokens, full 49k vocabulary and its
  backward) costs ≈ 1.3 s of one core, so 15 steps is what the quick tier affords — an under-trained
  tuned lens, which makes "below the logit lens" a conservative test.
* the closed-form translators (``fit_translators_ridge``: ridge regression of h_L on [h_l, 1],
  λ = 1e-3 × mean diagonal of XᵀX) are recorded beside it: the optimum a longer KL run would start from.
* controls: (a) the ridge fit on *shuffled* pairs (h_l of one token, h_L of another) — it can only
  learn the marginal, so it must be worse than the ridge fit at every layer; (b) the brief's control:
  a randomly initialised translator (nn.Linear's default init, no training) should be worse than the
  identity (= logit lens).

Predictions written before running (from the issue): logit-lens KL falls with depth, Spearman
ρ(layer, KL) ≤ −0.8; tuned lens below the logit lens at most (≥ 80 %) layers; random translator
worse than identity at ≥ 80 % of the layers.

Seen in the prototype (seed 0, ridge translators then): the logit-lens KL is 114 nats at layer 0,
12.9 at layer 1, then *rises* to 19.9 at layer 18 before falling to 5.1 (layer 27) and 0 — not
monotone, so the first prediction fails (strict xfail below, with the numbers). The fitted lens
was below the logit lens at every layer and nearly monotone (its ρ ≤ −0.8 was added as an assertion
*after* seeing this). The random translator came out *better* than the identity at 9 of 10 layers
(e.g. 13.2 vs 15.1 at layer 6) — strict xfail with a hypothesis below. A first KL run from the
identity (20 steps, seed 0) gave 25 nats at layer 0, 5.3–6.2 in layers 3–18, 1.7 at 27: below the
logit lens everywhere, above the ridge fit.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="interp_lens_depth",
    paper="interp",
    statement=(
        "“Our method, the tuned lens, is a refinement of the earlier ‘logit lens’ technique, which yielded "
        "useful insights but is often brittle … showing it to be more predictive, reliable and unbiased than "
        "the logit lens.” (abstract); per-layer KL to the final distribution falls with depth (paraphrase of §3)."
    ),
    source=Source(title="Eliciting Latent Predictions from Transformers with the Tuned Lens", arxiv="2303.08112",
                  version="v1", where="abstract; §3 (Fig. 2: KL per layer, logit vs tuned lens, BLOOM/OPT/Pythia)"),
    paper_value="qualitative: tuned-lens KL below logit-lens KL at every layer and decreasing with depth",
    prediction=(
        "Logit-lens KL(final ‖ lens_l) falls with depth: Spearman ρ(layer, KL) ≤ −0.8 over the 31 layer indices. "
        "Tuned lens (translators from the identity, trained by KL on train windows) below the logit lens on "
        "held-out windows at ≥ 80 % of the trained layers. Control: a random (untrained) translator is worse than "
        "the identity at ≥ 80 % of them; a closed-form translator fitted on shuffled pairs is worse than the same "
        "fit on true pairs at every layer."
    ),
    metric="KL(final ‖ lens_l), nats/token, mean over 128 held-out prose tokens; Spearman ρ of KL with layer",
    tolerance=(
        "logit ρ ≤ −0.8 (strict xfail); tuned (KL) < logit at ≥ 80 % of layers; tuned ρ ≤ −0.8 (post hoc); "
        "shuffled ridge > ridge at all layers; random > identity at ≥ 80 % (strict xfail)"
    ),
    tolerance_why=(
        "The thresholds are the issue's predictions (ρ ≤ −0.8 'strongly negative'; 'most layers' read as ≥ 80 %), not "
        "moved after the sweep. Seed = the training windows, the KL minibatches and the random translator; the "
        "held-out text is fixed, so the logit lens is deterministic. Table fixtures/calibration/interp_lens_depth.json "
        "(seeds 0–4, KL-trained tuned lens from the identity, 15 Adam steps): tuned below logit at 10/10 layers on "
        "every seed; tuned ρ −0.90…−0.83 (the thinnest margin: 15 steps leave the middle layers under-trained and "
        "not quite monotone); shuffled-pair ridge − ridge ≥ 1.22 nats at every layer; the ridge fit is below the "
        "15-step KL lens at every layer on every seed; logit ρ −0.35 (peak at layer 18) → xfail 5/5; random "
        "translator worse than identity at only 10–30 % of layers → xfail 5/5. Earlier ridge-only version: fresh "
        "seeds 100–104 passed 5/5. KL version on fresh seeds 100–104 (interp_lens_depth.fresh.json): all tests held on "
        "every seed (1 pass, 2 strict xfails), so confirmed."
    ),
    tier="quick",
    tags=("real_model",),
    calibration="fixtures/calibration/interp_lens_depth.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

SEQ, N_EVAL, N_TRAIN, EVERY, RIDGE = 32, 4, 24, 3, 1e-3
KL_STEPS, KL_LR, KL_BATCH = 15, 1e-3, 64


def _spearman(values):
    """Spearman ρ of ``values`` with their index (no ties expected)."""
    r = np.argsort(np.argsort(np.asarray(values)))
    return float(np.corrcoef(np.arange(len(r)), r)[0, 1])


@pytest.fixture(scope="module")
def measured(lab_seed, smollm2):
    from labcore.interp import lenses
    from labcore.interp.readout import kl_from_logits, unembed
    from labcore.pretrained.corpus import load_domain, random_windows

    model, tok = smollm2.model, smollm2.tokenizer
    split = load_domain("prose", tok)
    g = torch.Generator().manual_seed(lab_seed)
    held_out = split.eval_blocks(SEQ)[:N_EVAL]
    train = random_windows(split.train_ids, SEQ, N_TRAIN, g)
    train_resids = lenses.lens_residuals(model, train)
    resids = lenses.lens_residuals(model, held_out)
    L, d = len(resids) - 1, resids[0].shape[-1]
    layers = list(range(0, L, EVERY))

    tuned = lenses.TunedLens(d, L)  # identity init: the logit lens until trained
    kl_losses = lenses.train_translators_kl(model, tuned, train_resids, layers, steps=KL_STEPS, lr=KL_LR,
                                            batch_tokens=KL_BATCH, generator=g)
    ridge = lenses.fit_translators_ridge(lenses.TunedLens(d, L), train_resids, layers, RIDGE)
    n_train_tokens = train_resids[0].shape[0] * train_resids[0].shape[1]
    shuffled = lenses.fit_translators_ridge(lenses.TunedLens(d, L), train_resids, layers, RIDGE,
                                            perm=torch.randperm(n_train_tokens, generator=g))
    torch.manual_seed(lab_seed)
    random_lens = lenses.TunedLens(d, L)
    for t in random_lens.translators:
        t.reset_parameters()  # nn.Linear's default init: A_l h has ≈ 0.58 ‖h‖, random direction
    del train_resids
    with torch.no_grad():
        final = unembed(model, resids[-1])
        logit = [float(kl_from_logits(final, unembed(model, r)).mean()) for r in resids]

        def kl(lens):
            return [float(kl_from_logits(final, lens.logits(model, resids[l], l)).mean()) for l in layers]

        out = {"load_seconds": smollm2.load_seconds, "layers": layers, "logit": logit, "tuned": kl(tuned),
               "ridge": kl(ridge), "shuffled": kl(shuffled), "random": kl(random_lens), "kl_losses": kl_losses,
               "norms": [float(r.norm(dim=-1).median()) for r in resids]}
    return out


def _record(lab, m):
    layers = m["layers"]
    logit_at = [m["logit"][l] for l in layers]
    lab.record(load_seconds=m["load_seconds"], layers=layers, kl_logit=np.round(m["logit"], 3).tolist(),
               kl_tuned=np.round(m["tuned"], 3).tolist(), kl_ridge=np.round(m["ridge"], 3).tolist(),
               kl_shuffled=np.round(m["shuffled"], 3).tolist(), kl_random=np.round(m["random"], 3).tolist(),
               kl_train_loss_first_last=[round(m["kl_losses"][0], 2), round(m["kl_losses"][-1], 2)],
               rho_logit=_spearman(m["logit"]), rho_tuned=_spearman(m["tuned"] + [0.0]),
               frac_tuned_below_logit=float(np.mean(np.array(m["tuned"]) < np.array(logit_at))),
               frac_ridge_below_tuned=float(np.mean(np.array(m["ridge"]) < np.array(m["tuned"]))),
               frac_random_worse=float(np.mean(np.array(m["random"]) > np.array(logit_at))),
               min_shuffled_minus_ridge=float(np.min(np.array(m["shuffled"]) - np.array(m["ridge"]))),
               logit_peak_layer=int(np.argmax(m["logit"][1:]) + 1), logit_peak_kl=float(max(m["logit"][1:])))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ax = axes[0]
    ax.plot(range(len(m["logit"])), m["logit"], "o-", ms=3, label="logit lens")
    ax.plot(layers, m["tuned"], "s-", label=f"tuned lens (KL, Adam, {KL_STEPS} steps from identity)")
    ax.plot(layers, m["ridge"], "d-", label="closed-form translators (ridge regression)")
    ax.plot(layers, m["shuffled"], "^:", label="control: ridge fitted on shuffled pairs")
    ax.plot(layers, m["random"], "x--", label="control: random translator")
    ax.set(yscale="log", xlabel="layer (resid_pre l; 30 = final)", ylabel="KL(final ‖ lens), nats",
           title="SmolLM2, 128 held-out prose tokens")
    ax.legend(fontsize=7)
    axes[1].semilogy(range(len(m["norms"])), m["norms"], "o-", ms=3)
    axes[1].set(xlabel="layer", ylabel="median ‖h_l‖", title="residual norm (what the final norm undoes)")
    fig.tight_layout()
    lab.savefig(fig, "lens_depth")


def test_tuned_lens_beats_logit_lens(lab, measured):
    m = measured
    _record(lab, m)
    logit_at = np.array([m["logit"][l] for l in m["layers"]])
    tuned, ridge, shuffled = np.array(m["tuned"]), np.array(m["ridge"]), np.array(m["shuffled"])
    frac = float(np.mean(tuned < logit_at))
    assert frac >= 0.8, f"tuned lens below the logit lens at only {frac:.0%} of layers: {tuned.round(2)} vs {logit_at.round(2)}"
    rho = _spearman(m["tuned"] + [0.0])
    assert rho <= -0.8, f"tuned-lens KL does not fall steadily with depth: ρ = {rho:.2f}, {tuned.round(2)}"
    # control: a translator that cannot use the token's own residual (shuffled targets) must lose everywhere
    assert (shuffled > ridge).all(), f"shuffled-pair translator {shuffled.round(2)} vs ridge {ridge.round(2)}"


@pytest.mark.xfail(strict=True, reason=(
    "prototype, seed 0: logit-lens KL 114 nats at layer 0, 12.9 at layer 1, rising to 19.9 at layer 18, then "
    "12.2 (24), 5.1 (27), 0; Spearman ρ ≈ −0.3. Hypothesis: as Belrose et al. report for BLOOM/OPT, the "
    "middle layers of this model write in a basis the unembedding does not read (the tuned lens, which "
    "rotates it back, falls monotonically), so the logit lens is a biased reader here, not a depth curve"))
def test_logit_lens_kl_falls_with_depth(lab, measured):
    m = measured
    _record(lab, m)
    rho = _spearman(m["logit"])
    assert rho <= -0.8, f"logit-lens KL vs layer: ρ = {rho:.2f}; per layer {np.round(m['logit'], 1)}"


@pytest.mark.xfail(strict=True, reason=(
    "prototype, seed 0: the random translator's KL is *below* the identity's at 9 of 10 layers (13.2 vs 15.1 "
    "nats at layer 6, 4.4 vs 5.1 at 27). Hypothesis: the logit lens is confidently wrong in the middle layers; "
    "adding a random vector of ~0.6 ‖h‖ flattens the readout distribution, and a flatter wrong guess has a "
    "smaller KL from the final distribution — 'worse than identity' is not a control for this model"))
def test_random_translator_worse_than_identity(lab, measured):
    m = measured
    _record(lab, m)
    logit_at = np.array([m["logit"][l] for l in m["layers"]])
    frac = float(np.mean(np.array(m["random"]) > logit_at))
    assert frac >= 0.8, f"random translator worse than identity at only {frac:.0%}: {np.round(m['random'], 2)} vs {logit_at.round(2)}"
