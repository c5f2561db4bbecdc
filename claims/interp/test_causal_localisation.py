"""Causal tracing on the wind-tunnel model: where does the fact that decides the answer live?

Lab notebook. Meng et al. (ROME, 2022) corrupt the subject of a factual prompt, then restore one
hidden state (layer × token) at a time from the clean run and measure how much of the clean answer
comes back: the effect is concentrated at the subject's last token in middle layers ("early site")
and at the last token in late layers ("late site"), and is ≈ 0 elsewhere. Wang et al. (2022) use
the same activation patching with clean/corrupted prompt pairs and a logit-difference metric.

Our version: the shared wind-tunnel transformer (``labcore.training.wind_tunnel``: bijection
elimination, V = 10, 9 keys, 3 layers; the same model per seed as claims/bayes). At the final
query (position 16, the 9th key, never seen before) the exact answer is "one of the two values not
shown yet". A clean/corrupted pair differs in ONE shown value token, at value slot j (position
2j+1): the clean row shows v_j and leaves a unseen; the corrupted row shows a instead (still a
valid bijection sequence, so nothing is off-distribution). The clean answer favours a over v_j,
the corrupted one v_j over a, so the metric is the logit difference logit(a) − logit(v_j) at the
final position (``labcore.interp.patching.logit_diff_metric``), and the restoration of a patch is

    R = (metric(patched) − metric(corrupted)) / (metric(clean) − metric(corrupted))

(batch means, 128 pairs per j). We patch ``hook_resid_pre`` of every layer × position from the
clean into the corrupted run (``activation_patching``), for every j = 0..7.

At layer 0 the only position whose residual differs between the two runs is the changed value
token itself, so R = 1 there and R = 0 everywhere else by construction (a sanity check, not
evidence). The evidence is in layers 1 and 2: does the information stay on the value token, move to
the final position, or smear over the other tokens?

What we saw (seeds 0–2, the first run; 10 seeds in the tables): it moves, and nowhere else. In
resid_pre 1 the value token keeps 0.39–0.81 of the effect and the final position already has
0.20–0.61; by resid_pre 2 the final position holds 0.64–0.92 (ROME's "late site" at the last token) and the value token the rest; the two sites add up
to 1.00–1.03 in every layer, and the 15 other positions restore |R| ≤ 0.003. A small model with
one answer-relevant token has no room for a smeared "early site": the hand-off happens in the
attention of blocks 0–1 (the final query attends to the shown values to eliminate them). ~8 s with
the model cached; ~55 s when the shared model is trained first.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="interp_causal_localisation",
    paper="interp",
    statement=(
        "“... we find that a few states are causally decisive: restoring them brings back the correct "
        "prediction ... a distinct set of MLP states at the last subject token in middle layers ... and "
        "attention at the last token in late layers.” (causal tracing); activation patching of clean into "
        "corrupted runs localises the circuit (Wang et al.)"
    ),
    source=Source(title="Locating and Editing Factual Associations in GPT", arxiv="2202.05262", version="v5",
                  where="§2.1 causal tracing, Fig. 1 and 2 (indirect effect per layer × token); "
                        "also Wang et al. arXiv 2211.00593 §3 (path/activation patching, logit difference)"),
    paper_value="qualitative: restoration concentrated at the subject token (middle layers) and the last token "
                "(late layers), ≈ 0 elsewhere",
    prediction=(
        "Written before running: at every layer, restoration at the changed value token plus restoration at "
        "the final position ≥ 0.8 (the information sits at those two sites); in the last layer's resid_pre "
        "the final position restores ≥ 0.5 (the 'late site'); control: mean |R| over all other positions "
        "(every layer, every j) ≤ 0.05 and max |R| there ≤ 0.25."
    ),
    metric=(
        "R(layer, pos) = normalised restoration of logit(a) − logit(v_j) at the final position after patching "
        "hook_resid_pre[layer, pos] clean → corrupted; 128 pairs per value slot j = 0..7"
    ),
    tolerance="per layer mean_j [R(value tok) + R(final)] ≥ 0.8; R(final, last layer) ≥ 0.5; others: mean |R| ≤ 0.05, max |R| ≤ 0.25",
    tolerance_why=(
        "Bounds written before the first run and kept. Seeds 0–4 (fixtures/calibration/interp_causal_localisation.json): "
        "5/5 passed; R(value token) by layer 1 / 0.39–0.81 / 0.00–0.40 and R(final) 0 / 0.20–0.61 / 0.60–1.00 "
        "(min–max over seeds, mean over j: the information moves from the value token to the final position across "
        "layers 1–2); the two sites sum to 1.00–1.03 in every layer; other positions mean |R| ≤ 1.3e-4, max |R| ≤ "
        "0.003 (≈ float noise); clean/corrupted logit differences ≈ ±7.0 for every j. Fresh seeds 100–104 (.fresh.json): "
        "5/5 passed; R(final, last layer) 0.65–1.00, sites 1.00–1.01, others max |R| ≤ 0.003. Thinnest margin: "
        "R(final, last layer) 0.60 (seed 0–4 range) against 0.5. Broken variants (seed 0, the test run on them): the "
        "untrained model (step-0 snapshot) fails — clean/corrupted logit differences 0.00–0.02, and other positions "
        "reach |R| 0.48; reading the key token 2j instead of the changed value token fails — sites 0.00/0.20/0.64 per "
        "layer and other positions max |R| 1.0."
    ),
    tier="quick",
    status="confirmed",
    calibration="fixtures/calibration/interp_causal_localisation.json",
)

N_PAIRS = 128
PAIR_SEED_BASE = 3_000_017  # + seed: pairs drawn from their own generator (not the train/eval/probe streams)


@pytest.fixture(scope="module")
def traced(lab_seed):
    from labcore.interp.patching import (
        activation_patching,
        logit_diff_metric,
        run_metric,
    )
    from labcore.training.wind_tunnel import train_bijection

    run = train_bijection(lab_seed)
    model, task = run.model.eval(), run.task
    V, L = task.V, task.L
    batch = task.sample(N_PAIRS, torch.Generator().manual_seed(PAIR_SEED_BASE + lab_seed))
    final = task.seq_len - 1
    # the values never shown before the final query: v_L (the answer) and the one value of no key
    shown = torch.zeros(N_PAIRS, V, dtype=torch.bool)
    shown.scatter_(1, batch.values[:, : L - 1], True)
    unseen = torch.argsort(shown.to(torch.int64), dim=1, stable=True)[:, 0]  # smallest unseen value: a
    out = {}
    for j in range(L - 1):
        pos = 2 * j + 1
        clean = batch.tokens.clone()
        corrupt = clean.clone()
        corrupt[:, pos] = unseen + V
        metric = logit_diff_metric(unseen + V, batch.values[:, j] + V, pos=final)
        m_clean, m_corrupt = run_metric(model, clean, metric), run_metric(model, corrupt, metric)
        patched = activation_patching(model, clean, corrupt, metric, hook="resid_pre").values  # (layer, pos)
        out[j] = {"pos": pos, "clean": m_clean, "corrupt": m_corrupt,
                  "R": ((patched - m_corrupt) / (m_clean - m_corrupt)).numpy()}
    return {"run": run, "final": final, "by_j": out, "n_layers": run.config.n_layers}


def _plot(lab, traced):
    by_j, final = traced["by_j"], traced["final"]
    fig, axes = plt.subplots(2, 4, figsize=(15, 5.5), sharex=True, sharey=True)
    for ax, (j, d) in zip(axes.flat, by_j.items()):
        im = ax.imshow(d["R"], vmin=-0.2, vmax=1.0, cmap="magma", aspect="auto")
        ax.axvline(d["pos"], color="c", lw=0.6, ls=":")
        ax.set_title(f"value slot j={j} (pos {d['pos']})", fontsize=9)
        ax.set_yticks(range(traced["n_layers"]))
        ax.set_yticklabels([f"resid_pre {l}" for l in range(traced["n_layers"])], fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel(f"position (final = {final})")
    fig.colorbar(im, ax=axes, shrink=0.7, label="restoration R")
    fig.suptitle("causal tracing on the wind-tunnel model: patch clean → corrupted, one layer × position")
    lab.savefig(fig, "restoration_heatmaps")


def test_restoration_localised(lab, traced):
    by_j, final, n_l = traced["by_j"], traced["final"], traced["n_layers"]
    value_R = np.array([[d["R"][l, d["pos"]] for d in by_j.values()] for l in range(n_l)])  # (layer, j)
    final_R = np.array([[d["R"][l, final] for d in by_j.values()] for l in range(n_l)])
    others, others_late = [], []
    for d in by_j.values():
        mask = np.ones(d["R"].shape[1], dtype=bool)
        mask[[d["pos"], final]] = False
        others.append(d["R"][:, mask].ravel())
        others_late.append(d["R"][1:, d["pos"] + 1:final].ravel())  # the non-trivial part: later tokens, layers ≥ 1
    others, others_late = np.concatenate(others), np.concatenate(others_late)
    sites = value_R.mean(1) + final_R.mean(1)
    lab.record(value_token_R=value_R.mean(1).round(4).tolist(), final_pos_R=final_R.mean(1).round(4).tolist(),
               sites_sum=sites.round(4).tolist(), final_R_last_layer=float(final_R[-1].mean()),
               others_mean_abs=float(np.abs(others).mean()), others_max_abs=float(np.abs(others).max()),
               others_after_j_mean_abs=float(np.abs(others_late).mean()),
               metric_clean=[round(d["clean"], 3) for d in by_j.values()],
               metric_corrupt=[round(d["corrupt"], 3) for d in by_j.values()],
               value_R_by_j=value_R.round(3).tolist(), final_R_by_j=final_R.round(3).tolist())
    _plot(lab, traced)

    assert all(d["clean"] > 0 > d["corrupt"] for d in by_j.values()), "clean/corrupted answers do not differ in sign"
    assert (sites >= 0.8).all(), f"value token + final position restore only {sites.round(3)} per layer"
    assert final_R[-1].mean() >= 0.5, f"final position in the last layer restores {final_R[-1].mean():.3f}"
    # control that must come out the other way: patching elsewhere restores nothing
    assert np.abs(others).mean() <= 0.05 and np.abs(others).max() <= 0.25, (
        f"other positions restore mean |R| {np.abs(others).mean():.3f}, max {np.abs(others).max():.3f}"
    )
