"""Residual-stream norms grow roughly geometrically with depth in SmolLM2, not in a re-initialised copy.

Lab notebook. Heimersheim & Turner (2023, LessWrong/Alignment Forum post "Residual stream norms grow
exponentially over the forward pass") measure ‖x_l‖ per layer on many prompts (position 0
excluded) and find straight lines on a log plot: about ×1.045 per layer in GPT-2 XL. Their favoured
explanation: behind a pre-norm, a layer cannot easily erase what is in the stream, but it can drown
it out by writing vectors a few % larger than the last layer did — so the *learned* writing
weights grow with depth. A freshly initialised network has no reason to do this: every block reads
a normalised vector and writes through weights of the same scale, so the norm should grow
additively (each layer adds a similar-size vector) — fast at first, then ever more slowly in
relative terms.

Our version (SmolLM2-135M, fp32, 4 held-out prose windows × 32 tokens; 4 s after loading on one
core, 20–45 s under heavy contention, most of it building the re-initialised copy):
* ‖x_l‖ = median over tokens at positions ≥ 1 of the residual norm at ``blocks.{l}.hook_resid_pre``
  (l = 0…29) and the final ``resid_post`` (index 30).
* growth factor g = exp(slope) of a least-squares line through log ‖x_l‖ over layers 1…30 (layer 0 is
  the raw embedding, 15× smaller than layer 1, and would dominate the fit), and separately over the
  early half (1…16) and the late half (15…30).
* recorded, not asserted: the same norm at position 0 (the first token, an attention sink in
  ``interp_attention_sinks``), which the post also leaves out because it behaves differently.
* control: ``AutoModelForCausalLM.from_config(config)`` — the same architecture with transformers'
  ``_init_weights`` (normal, std 0.02; norms' gains 1), seeded by --lab-seed.

Prediction (written after a first look at the trained model's norms, before the control was run;
the issue's wording: "roughly geometrically"): trained: log-linear fit R² ≥ 0.9 over layers 1–30,
g ≥ 1.03, and the late half grows at least as fast as the early half (no slow-down). Control: it
slows down — late-half g < early-half g and late-half g < 1.03.

Seen while writing this (seed 0): trained g = 1.087 (R² 0.95), early 1.074, late 1.125 (R² 0.98),
‖x‖ 42 at layer 1 → 842 at the end; re-initialised g = 1.056 over 1–30 (R² 0.77), early 1.110, late
1.026: the norm 2.7 → 29.6 grows almost linearly in l, i.e. additively (power-law exponent 0.64).
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="interp_residual_norm_growth",
    paper="interp",
    statement=(
        "“For a range of language models and a range of input prompts, the norm of each residual stream grows "
        "exponentially over the forward pass, with average per-layer growth rate of about 1.045 in GPT2-XL.” "
        "(Heimersheim & Turner 2023, LessWrong post; it has no arXiv id — the arXiv field names the tuned-lens "
        "paper, whose per-layer translators exist partly to undo this drift; the norm claim is the post's.)"
    ),
    source=Source(title="Eliciting Latent Predictions from Transformers with the Tuned Lens", arxiv="2303.08112",
                  version="v1", where=("claim and number from Heimersheim & Turner 2023, 'Residual stream norms grow "
                                       "exponentially over the forward pass' (LessWrong, summary); arXiv id is "
                                       "the tuned-lens paper's as the nearest arXiv source")),
    paper_value="GPT-2 XL: ≈ ×1.045 per layer (48 layers), straight lines on a log-norm plot",
    prediction=(
        "SmolLM2: log ‖x_l‖ vs l linear with R² ≥ 0.9 over layers 1–30, growth g ≥ 1.03 per layer, late-half g ≥ "
        "early-half g. Re-initialised copy: late-half g < early-half g and < 1.03 (additive, decelerating growth)."
    ),
    metric="median ‖resid_pre_l‖ over 124 held-out prose tokens (positions ≥ 1); g = exp(slope of log-norm vs l)",
    tolerance="trained: R² ≥ 0.9, g ≥ 1.03, g_late ≥ g_early; control: g_late < g_early and g_late < 1.03",
    tolerance_why=(
        "The trained model is deterministic (fixed text and weights); only the control's init depends on the seed. "
        "1.03 is the post's GPT-2 XL value (1.045) minus a margin, chosen before measuring SmolLM2. Table "
        "fixtures/calibration/interp_residual_norm_growth.json, seeds 0–4 (5/5 passed): trained g 1.087, R² 0.95, "
        "early/late 1.074/1.125 (identical on every seed); control early 1.109–1.113, late 1.024–1.026 — the "
        "control's late-half bound (< 1.03) has a margin of only ≈ 0.004, ≈ 4× its seed spread. Recalibrated "
        "after moving to the shared smollm2 fixture (same numbers). Fresh seeds 100–104 "
        "(fixtures/calibration/interp_residual_norm_growth.fresh.json): 5/5 passed, control late 1.025–1.026."
    ),
    tier="quick",
    tags=("real_model",),
    calibration="fixtures/calibration/interp_residual_norm_growth.json",
    status="confirmed",
)

SEQ, N_EVAL, EARLY, LATE = 32, 4, (1, 16), (15, 30)


def _fit(norms, lo, hi):
    """(growth factor per layer, R²) of a least-squares line through log norm over layers lo…hi."""
    x = np.arange(lo, hi + 1)
    y = np.log(np.asarray(norms)[lo:hi + 1])
    slope, icpt = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (slope * x + icpt)) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return float(np.exp(slope)), float(r2)


def _norms(hooked, tokens):
    """Median residual norm per layer index at positions ≥ 1, and at position 0 (the attention sink)."""
    from labcore.interp import lenses

    resids = lenses.lens_residuals(hooked, tokens)
    return ([float(r[:, 1:].norm(dim=-1).median()) for r in resids],
            [float(r[:, 0].norm(dim=-1).median()) for r in resids])


@pytest.fixture(scope="module")
def measured(lab_seed, smollm2):
    from transformers import AutoModelForCausalLM

    from labcore.glassbox.hf import HookedHF
    from labcore.pretrained.corpus import load_domain

    tokens = load_domain("prose", smollm2.tokenizer).eval_blocks(SEQ)[:N_EVAL]
    trained, trained_pos0 = _norms(smollm2.model, tokens)
    torch.manual_seed(lab_seed)
    fresh = HookedHF(AutoModelForCausalLM.from_config(smollm2.base.config, attn_implementation="eager").eval())
    return {"load_seconds": smollm2.load_seconds, "trained": trained, "trained_pos0": trained_pos0,
            "reinit": _norms(fresh, tokens)[0]}


def test_residual_norm_grows_geometrically(lab, measured):
    m = measured
    fits = {name: {"all": _fit(m[name], 1, len(m[name]) - 1), "early": _fit(m[name], *EARLY),
                   "late": _fit(m[name], *LATE)} for name in ("trained", "reinit")}
    lab.record(load_seconds=m["load_seconds"], norms_trained=np.round(m["trained"], 2).tolist(),
               norms_reinit=np.round(m["reinit"], 3).tolist(), norms_trained_pos0=np.round(m["trained_pos0"], 2).tolist(),
               **{f"{name}_{part}_{k}": v[i] for name, f in fits.items() for part, v in f.items()
                  for i, k in enumerate(("g", "r2"))})

    fig, ax = plt.subplots(figsize=(7, 4))
    layers = np.arange(len(m["trained"]))
    for name, style in (("trained", "o-"), ("reinit", "s--")):
        g, r2 = fits[name]["all"]
        ax.semilogy(layers, m[name], style, ms=3, label=f"{name}: ×{g:.3f}/layer (R² {r2:.2f}); "
                    f"early ×{fits[name]['early'][0]:.3f}, late ×{fits[name]['late'][0]:.3f}")
    ax.semilogy(layers, m["trained_pos0"], ":", color="C0", alpha=0.6, label="trained, position 0 only (sink; not fitted)")
    ax.set(xlabel="layer (resid_pre l; 30 = final residual)", ylabel="median ‖x_l‖ (positions ≥ 1)",
           title="SmolLM2 residual norm: trained vs re-initialised")
    ax.legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "residual_norm_growth")

    g, r2 = fits["trained"]["all"]
    g_early, g_late = fits["trained"]["early"][0], fits["trained"]["late"][0]
    assert r2 >= 0.9 and g >= 1.03, f"trained: ×{g:.3f}/layer, R² {r2:.2f} (norms {np.round(m['trained'], 1)})"
    assert g_late >= g_early, f"trained growth slows down: early ×{g_early:.3f}, late ×{g_late:.3f}"
    # control: a re-initialised copy grows additively — fast at first, then slowing towards ×1
    c_early, c_late = fits["reinit"]["early"][0], fits["reinit"]["late"][0]
    assert c_late < c_early and c_late < 1.03, (
        f"re-initialised copy: early ×{c_early:.3f}, late ×{c_late:.3f} (norms {np.round(m['reinit'], 2)})")
