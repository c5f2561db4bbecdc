"""Linear probes on SmolLM2's residual stream: selective for the previous token after layer 0.

Lab notebook. Hewitt & Liang (2019) argue that a probe's accuracy alone says little: an expressive
probe can memorise each word type's label. Their control task gives every word type a random but
fixed label; selectivity = task accuracy − control accuracy is high only when the representation
encodes the property beyond the word's identity.

Our version (SmolLM2-135M, fp32; one CPU core):
* text: all prose and code windows of 64 tokens (``labcore.pretrained.corpus``, train + eval streams;
  nothing is trained on them except the probes), positions ≥ 1.
* features: ``blocks.{l}.hook_resid_pre`` for l = 0, 3, …, 27 (layer 0 = the token embedding).
* tasks: current token identity and previous token identity, each restricted to rows whose label is
  one of the 50 most frequent token types (label = its rank). Probes: ``labcore.interp.probing``
  (multinomial logistic, L-BFGS), one 80/20 split per layer seeded by --lab-seed, 2 control tasks
  per probe keyed by the *current* token type (Hewitt & Liang's word type).

Prediction (written before running): previous token: layer 0 can only guess the previous token from
the current one (bigram statistics) while the control is memorised per type, so selectivity at
layer 0 ≤ 0.1; some later layer's selectivity exceeds layer 0's by ≥ 0.2, and is > 0 (the control is
learnable but worse). Control learnable: at layer 0 the control accuracy is ≥ 2× the majority-label
rate. Current token: recorded (its control is keyed by the label itself, so selectivity says little).

Seen (seeds 0–2, ~50 s a seed on one core with SmolLM2 cached): previous token — layer 0 accuracy 0.46
vs control 0.73 (selectivity −0.28: the control is memorised per type, the task only guessed from
bigrams); selectivity 0.11 at layer 3, dips to ≈0.03–0.05 at layers 6–9, peaks at layer 18 (0.26–0.27
on every seed), 0.13 at layer 27. Current token: accuracy ≈ 1.0 and control ≈ 1.0 at every layer,
selectivity ≈ 0 — the token's identity stays linearly readable, and a control keyed by the same type
is just as easy, as Hewitt & Liang's argument predicts.
"""

import copy

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="interp_probe_selectivity",
    paper="interp",
    statement=(
        "“We propose control tasks, which associate word types with random outputs, to complement linguistic "
        "tasks. By construction, these tasks can only be learned by the probe itself. So a good probe, (one "
        "that reflects the representation), should be selective, achieving high linguistic task accuracy and "
        "low control task accuracy.”"
    ),
    source=Source(title="Designing and Interpreting Probes with Control Tasks", arxiv="1909.03368", version="v1",
                  where="Abstract; §2 (control tasks, selectivity)"),
    paper_value="qualitative: selectivity = task − control accuracy; linear probes on ELMo are selective",
    prediction=(
        "Previous-token probe: selectivity at layer 0 ≤ 0.1; peak selectivity over layers 3–27 ≥ layer 0's + 0.2 "
        "and > 0; control accuracy at layer 0 ≥ 2× the majority-label rate (learnable)."
    ),
    metric="held-out accuracy, control accuracy (mean of 2), selectivity per layer (every 3rd layer)",
    tolerance="sel₀ ≤ 0.1; max_l sel_l − sel₀ ≥ 0.2; max sel > 0; control₀ ≥ 2 × majority rate",
    tolerance_why=(
        "Seed = the probe's train/test split and the control labels. Thresholds written before running. Table "
        "fixtures/calibration/interp_probe_selectivity.json (seeds 0–4, 5/5 passed; the numbers below are of the "
        "first sweep, seeds 0–2) and .fresh.json (seeds 100–104, 5/5 passed: confirmed). Selectivity at layer 0 "
        "−0.288 to −0.281 (bar ≤ 0.1); peak 0.256–0.270, always at layer 18 (bar: layer 0's + 0.2, i.e. margin "
        "≥ 0.54 vs 0.2); control accuracy at layer 0 0.706–0.756 vs majority-label rate 0.104 (bar 2×). The "
        "loosest margin is the peak's +0.2 over layer 0; seed spread on it is ±0.01."
    ),
    tier="quick",
    tags=("real_model",),
    calibration="fixtures/calibration/interp_probe_selectivity.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

SEQ, N_TYPES, N_CONTROLS, MAX_ITER = 64, 50, 2, 60
LAYERS = list(range(0, 30, 3))


@pytest.fixture(scope="module")
def measured(lab_seed):
    from labcore.glassbox.hf import HookedHF
    from labcore.interp.probing import probe_selectivity
    from labcore.pretrained.corpus import load_domain
    from labcore.pretrained.smollm2 import MissingModelError, pristine_smollm2

    try:
        base, tok, load_seconds = pristine_smollm2()
    except MissingModelError as e:
        pytest.skip(str(e))
    model = HookedHF(copy.deepcopy(base))
    windows = []
    for domain in ("prose", "code"):
        d = load_domain(domain, tok)
        windows += [d.eval_blocks(SEQ), d.train_blocks(SEQ)]
    tokens = torch.cat(windows)
    names = [f"blocks.{l}.hook_resid_pre" for l in LAYERS]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    model.detach_hooks()
    cur, prev = tokens[:, 1:].reshape(-1), tokens[:, :-1].reshape(-1)
    top = torch.bincount(cur).argsort(descending=True)[:N_TYPES]
    rank = torch.full((int(tokens.max()) + 1,), -1, dtype=torch.long)
    rank[top] = torch.arange(N_TYPES)
    g = torch.Generator().manual_seed(lab_seed)
    out = {"load_seconds": load_seconds, "n_tokens": cur.numel()}
    for task, lab_tok in (("current", cur), ("previous", prev)):
        y = rank[lab_tok]
        keep = y >= 0
        out[f"{task}_n"] = int(keep.sum())
        out[f"{task}_majority"] = float(torch.bincount(y[keep]).max() / keep.sum())
        rows = []
        for l in LAYERS:
            X = cache[f"blocks.{l}.hook_resid_pre"][:, 1:].reshape(-1, cache[names[0]].shape[-1])[keep]
            rows.append(probe_selectivity(X, y[keep], cur[keep], g, n_controls=N_CONTROLS, max_iter=MAX_ITER))
        out[task] = rows
    return out


def test_previous_token_probe_is_selective_after_layer_0(lab, measured):
    m = measured
    res = {t: m[t] for t in ("current", "previous")}
    rec = {"load_seconds": m["load_seconds"], "n_tokens": m["n_tokens"]}
    for t, rows in res.items():
        rec[f"{t}_rows"] = m[f"{t}_n"]
        rec[f"{t}_majority_rate"] = m[f"{t}_majority"]
        rec[f"{t}_accuracy"] = [round(r.task_accuracy, 3) for r in rows]
        rec[f"{t}_control_accuracy"] = [round(r.control_accuracy, 3) for r in rows]
        rec[f"{t}_selectivity"] = [round(r.selectivity, 3) for r in rows]
    sel = np.array([r.selectivity for r in res["previous"]])
    peak = int(np.argmax(sel[1:])) + 1
    rec.update(layers=LAYERS, prev_sel_layer0=float(sel[0]), prev_sel_peak=float(sel[peak]), prev_peak_layer=LAYERS[peak],
               prev_control_layer0=res["previous"][0].control_accuracy)
    lab.record(**rec)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, (t, rows) in zip(axes, res.items()):
        ax.plot(LAYERS, [r.task_accuracy for r in rows], "o-", label="task")
        ax.plot(LAYERS, [r.control_accuracy for r in rows], "s-", color="C7", label="control task")
        ax.plot(LAYERS, [r.selectivity for r in rows], "^-", color="C3", label="selectivity")
        ax.axhline(m[f"{t}_majority"], color="k", ls=":", lw=1, label="majority label")
        ax.set(xlabel="layer (resid_pre)", title=f"{t} token (top-{N_TYPES} types, {m[f'{t}_n']} rows)")
    axes[0].set_ylabel("held-out accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    lab.savefig(fig, "probe_selectivity")

    assert sel[0] <= 0.1, f"previous-token selectivity at layer 0 = {sel[0]:.3f} > 0.1"
    assert sel[peak] >= sel[0] + 0.2, f"peak selectivity {sel[peak]:.3f} (layer {LAYERS[peak]}) vs layer 0 {sel[0]:.3f}"
    assert sel[peak] > 0, f"peak selectivity {sel[peak]:.3f} ≤ 0"
    # control: the control task is learnable where the representation is the token's type
    c0 = res["previous"][0].control_accuracy
    assert c0 >= 2 * m["previous_majority"], f"control accuracy at layer 0 {c0:.3f} vs majority {m['previous_majority']:.3f}"
