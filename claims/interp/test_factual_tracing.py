"""Causal tracing of facts in SmolLM2: where does "The Eiffel Tower … city of" → " Paris" live?

Lab notebook. Meng et al. (2022, ROME) corrupt the subject's token embeddings with Gaussian noise
(ν = 3σ of the embeddings), so the model no longer knows the answer, then restore one clean hidden
state at a time and measure how much of p(answer) comes back (the *indirect effect*). Averaged over
1,000 known facts in GPT-2 XL (their Fig. 2) the effect sits at two places: an **early site**, the
**last subject token** in the middle layers — carried there by the **MLPs of middle layers**
(restoring a window of 10 MLP layers at the last subject token recovers much of the answer) — and
a **late site**, the last token in the late layers (where attention has moved the fact). Restoring
other non-subject tokens does little.

Our version (SmolLM2-135M-Instruct, fp32, 30 layers; ``labcore.interp.tracing``):
* 20 subject-first prompts with one-token answers (capitals, landmarks, people); a fact is *known*
  when the model's top-1 next token is the answer; the first 8 known ones are traced (how many it
  knows is recorded). No BOS (the tokenizer adds none; with one, 3 of 4 test prompts got worse).
* corruption: N(0, (3σ)²) on every subject token's embedding, σ = std of ``hook_embed`` over all
  tokens of the 20 prompts; one noise draw per prompt, seeded by --lab-seed (ROME averages 10 draws
  per prompt; we average over prompts instead, to stay on the CPU budget).
* restorations at layers 0, 3, …, 27: the hidden state ``resid_post`` of layer l, and the MLP
  outputs ``mlp_out`` of the 5 layers l−2…l+2 (ROME: 10 of GPT-2 XL's 48), at each token position
  in ROME's categories — every subject token, the first subsequent token, one further token (the
  middle of the rest), the last token (all tokens for the first prompt, for the picture).
* metric: normalised indirect effect (p_restored − p_corrupt) / (p_clean − p_corrupt), per prompt,
  averaged over prompts per (layer, category); categories as ROME's Fig. 2 (first / middle / last
  subject token, first subsequent, further, last).

Prediction (the paper's, written before running; numbers set from the first 13-prompt look on
seed 0, which is part of the exploration sweep): hidden states — the last subject token carries
≥ 0.3 of the effect somewhere in layers 0–19; the last token carries < 0.1 in layers 0–9 and ≥ 0.7
at layer 27 (the late site). Control: the first subsequent token (corrupted too, as it reads the
subject) carries ≤ 0.1 at every layer and < 1/3 of the last subject token's peak. MLP windows — the
paper's headline: at the last subject token the effect peaks in the middle third (layers 10–19)
at ≥ 0.1.

Seen in that first look (seed 0, 13 known prompts, all positions): hidden-state effect at the last
subject token 0.47–0.57 in layers 3–12, fading to 0.24 by layer 21; the last token takes over at
24–27 (0.94); first subsequent token ≤ 0.01 everywhere. MLP windows at the last subject token:
0.15 (layers 0–2) and 0.14 (4–8), ≤ 0.01 in layers 10–19 — an *early*-layer MLP site, not a middle
one; for some subjects the effect sits on a middle subject token ("iffel" of "Eiffel Tower"), where
the entity is already resolved, not on the last one → strict xfail below with a hypothesis.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="interp_factual_tracing",
    paper="interp",
    statement=(
        "“… a causal intervention for identifying neuron activations that are decisive in a model's factual "
        "predictions. This reveals a distinct set of steps in middle-layer feed-forward modules that mediate "
        "factual predictions while processing subject tokens.” (abstract); the indirect effect concentrates at "
        "the last subject token (early site, mid-layer MLPs) and at the last token (late site) (§2.1–2.2, Fig. 2)."
    ),
    source=Source(title="Locating and Editing Factual Associations in GPT", arxiv="2202.05262", version="v5",
                  where="abstract; §2.1 (causal tracing, ν = 3σ), §2.2 and Fig. 1–2 (average indirect effect)"),
    paper_value=("GPT-2 XL, 1,000 known facts: hidden-state AIE large at the last subject token (early/middle "
                 "layers) and at the last token (late layers); MLP AIE (window 10) peaks at the last subject "
                 "token around layers 15–20 of 48; other tokens small"),
    prediction=(
        "Hidden states: last subject token ≥ 0.3 (normalised IE) somewhere in layers 0–19; last token < 0.1 in "
        "layers 0–9, ≥ 0.7 at layer 27. Control: first subsequent token ≤ 0.1 at every layer and < 1/3 of the "
        "last subject token's peak. MLP windows: peak at the last subject token in layers 10–19, ≥ 0.1."
    ),
    metric=("normalised indirect effect (p_restored − p_corrupt)/(p_clean − p_corrupt), mean over 8 known facts, "
            "per traced layer (0, 3, …, 27) and token category"),
    tolerance=("≥ 5 known facts; last-subject peak (layers 0–19) ≥ 0.3; last token ≤ 0.1 (layers 0–9), ≥ 0.7 "
               "(layer 27); control ≤ 0.1 and < ⅓ of the peak; MLP mid-third peak ≥ 0.1 (strict xfail)"),
    tolerance_why=(
        "Bars from the paper's qualitative picture, numbers set after the first 13-prompt look on seed 0 (said "
        "so in the docstring). Seed = the noise draws only (the prompts, the known set and the model are fixed). "
        "Table fixtures/calibration/interp_factual_tracing.json (seeds 0–4): 13 of 20 facts known on every seed; "
        "last-subject hidden-state peak 0.45–0.72 (layers 3–12; bar 0.3); last token ≤ 0.007 in layers 0–9 (bar "
        "0.1) and 0.82–0.90 at layer 27 (bar 0.7); control (first subsequent token) ≤ 0.020 (bar 0.1) → 5/5 passed. "
        "MLP windows at the last subject token: mid-third peak 0.003–0.037 (bar 0.1), overall peak 0.05–0.28 at "
        "layers 3–6 → strict xfail 5/5. Broken variant (re-initialised SmolLM2): knows 0 of 20 facts, fails the "
        "n_known ≥ 5 bar. Fresh seeds 100–104 (interp_factual_tracing.fresh.json): 5/5 passed, 5/5 "
        "strict-xfailed; last-subject peak 0.44–0.53, layer 27 0.81–0.86, control ≤ 0.011, MLP mid-third ≤ 0.049."
    ),
    tier="quick",
    tags=("real_model",),
    calibration="fixtures/calibration/interp_factual_tracing.json",
    status="confirmed",
)

#: (prompt, answer, subject): the subject is the prompt's prefix; one-token answers with a leading space
FACTS = [
    ("The Eiffel Tower is located in the city of", " Paris", "The Eiffel Tower"),
    ("The Colosseum is located in the city of", " Rome", "The Colosseum"),
    ("The Statue of Liberty is located in the city of", " New", "The Statue of Liberty"),
    ("Big Ben is located in the city of", " London", "Big Ben"),
    ("The Great Wall is located in the country of", " China", "The Great Wall"),
    ("Mount Fuji is located in the country of", " Japan", "Mount Fuji"),
    ("The Taj Mahal is located in the country of", " India", "The Taj Mahal"),
    ("Paris is the capital city of", " France", "Paris"),
    ("Tokyo is the capital city of", " Japan", "Tokyo"),
    ("Berlin is the capital city of", " Germany", "Berlin"),
    ("Madrid is the capital city of", " Spain", "Madrid"),
    ("Rome is the capital city of", " Italy", "Rome"),
    ("Albert Einstein was famous for his theory of", " relativity", "Albert Einstein"),
    ("William Shakespeare was a writer from the country of", " England", "William Shakespeare"),
    ("The Amazon river flows through the country of", " Brazil", "The Amazon river"),
    ("Microsoft was founded by Bill", " Gates", "Microsoft"),
    ("Mozart was a composer from the country of", " Austria", "Mozart"),
    ("The Kremlin is located in the city of", " Moscow", "The Kremlin"),
    ("The Sydney Opera House is located in the country of", " Australia", "The Sydney Opera House"),
    ("Lionel Messi plays the sport of", " football", "Lionel Messi"),
]
N_TRACE, NOISE, MLP_WINDOW = 8, 3.0, 5
LAYERS = list(range(0, 30, 3))
CATEGORIES = ["first subject", "middle subject", "last subject", "first subsequent", "further", "last"]


def _encode(tok, prompt, answer, subject):
    ids = tok(prompt).input_ids
    subj = tok(subject).input_ids
    if ids[:len(subj)] != subj or len(ids) < len(subj) + 3:
        raise ValueError(f"{prompt!r}: the subject {subject!r} must tokenise as the prompt's prefix, with ≥ 3 tokens after")
    return torch.tensor(ids), tok(answer).input_ids[0], len(subj)


def _groups(n, T):
    """Token positions of ROME's six categories for a prompt with subject tokens 0…n−1 and length T."""
    return [[0] if n > 1 else [], list(range(1, n - 1)), [n - 1], [n], list(range(n + 1, T - 1)), [T - 1]]


def _traced_positions(n, T, everything):
    if everything:
        return list(range(T))
    further = list(range(n + 1, T - 1))
    return sorted(set(range(n)) | {n, T - 1} | ({further[len(further) // 2]} if further else set()))


@pytest.fixture(scope="module")
def measured(lab_seed, smollm2):
    from labcore.interp import tracing

    model, tok = smollm2.model, smollm2.tokenizer
    encoded = [_encode(tok, *fact) for fact in FACTS]
    with torch.no_grad():
        top1 = [int(model(ids[None], logits_to_keep=1)[0, -1].argmax()) for ids, _, _ in encoded]
    known = [i for i, ((_, answer, _), t) in enumerate(zip(encoded, top1)) if t == answer]
    sigma = tracing.embedding_std(model, torch.cat([ids for ids, _, _ in encoded])[None])
    g = torch.Generator().manual_seed(lab_seed)
    traces = []
    for k, i in enumerate(known[:N_TRACE]):
        ids, answer, n = encoded[i]
        positions = _traced_positions(n, len(ids), everything=k == 0)
        tr = tracing.causal_trace(model, ids, answer, (0, n), NOISE * sigma, g, layers=LAYERS, positions=positions,
                                  windows={"mlp_out": MLP_WINDOW}, chunk=256)
        ie = tr.indirect_effect(normalise=True)  # (kind, layer, traced position)
        full = torch.full((2, len(LAYERS), len(ids)), float("nan"), dtype=torch.float64)
        full[:, :, positions] = ie
        traces.append({"fact": FACTS[i], "tokens": [tok.decode([t]) for t in ids], "n_subject": n, "ie": full.numpy(),
                       "p_clean": tr.p_clean, "p_corrupt": tr.p_corrupt})
    return {"known": [FACTS[i][0] for i in known], "n_facts": len(FACTS), "sigma": sigma, "traces": traces,
            "by_category": _by_category(traces)}


def _by_category(traces):
    """(kind, layer, category) mean normalised IE over prompts (a prompt without a category is skipped)."""
    out = np.full((2, len(LAYERS), len(CATEGORIES)), np.nan)
    for c in range(len(CATEGORIES)):
        rows = [np.nanmean(t["ie"][:, :, grp], axis=-1) for t in traces
                if (grp := _groups(t["n_subject"], t["ie"].shape[-1])[c])]
        if rows:
            out[:, :, c] = np.mean(rows, axis=0)
    return out


def _summary(m):
    cat = m["by_category"]
    resid, mlp = cat[0], cat[1]
    early = [i for i, l in enumerate(LAYERS) if l < 20]
    first_third = [i for i, l in enumerate(LAYERS) if l < 10]
    mid = [i for i, l in enumerate(LAYERS) if 10 <= l < 20]
    c = {name: CATEGORIES.index(name) for name in CATEGORIES}
    return {
        "subject_peak": float(resid[early, c["last subject"]].max()),
        "subject_peak_layer": LAYERS[int(np.argmax(resid[early, c["last subject"]]))],
        "last_token_early": float(resid[first_third, c["last"]].max()),
        "last_token_final": float(resid[-1, c["last"]]),
        "control_max": float(resid[:, c["first subsequent"]].max()),
        "mlp_mid_peak": float(mlp[mid, c["last subject"]].max()),
        "mlp_peak_layer": LAYERS[int(np.argmax(mlp[:, c["last subject"]]))],
        "mlp_peak": float(mlp[:, c["last subject"]].max()),
        "mlp_last_token_peak": float(mlp[:, c["last"]].max()),
    }


def _record(lab, m):
    s = _summary(m)
    lab.record(n_known=len(m["known"]), n_facts=m["n_facts"], n_traced=len(m["traces"]), known=m["known"],
               embedding_sigma=m["sigma"], p_clean=[round(t["p_clean"], 3) for t in m["traces"]],
               p_corrupt=[round(t["p_corrupt"], 4) for t in m["traces"]], layers=LAYERS, categories=CATEGORIES,
               resid_ie_by_category=np.round(m["by_category"][0], 3).tolist(),
               mlp_ie_by_category=np.round(m["by_category"][1], 3).tolist(), **s)
    _plot(lab, m)
    return s


def _plot(lab, m):
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for ax, k, title in ((axes[0], 0, "hidden state (resid_post l)"), (axes[1], 1, f"MLP outputs, window {MLP_WINDOW}")):
        im = ax.imshow(m["by_category"][k].T, aspect="auto", cmap="Purples", vmin=0, vmax=1)
        ax.set_yticks(range(len(CATEGORIES)), CATEGORIES, fontsize=8)
        ax.set_xticks(range(len(LAYERS)), LAYERS)
        ax.set(xlabel="restored layer", title=f"mean normalised IE, {len(m['traces'])} facts: {title}")
        fig.colorbar(im, ax=ax)
    t = m["traces"][0]
    for ax, k, name in ((axes[2], 0, "hidden state"), (axes[3], 1, "MLP window")):
        im = ax.imshow(t["ie"][k].T, aspect="auto", cmap="Purples" if k == 0 else "Greens", vmin=0, vmax=1)
        labels = [f"{tk}*" if i < t["n_subject"] else tk for i, tk in enumerate(t["tokens"])]
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xticks(range(len(LAYERS)), LAYERS)
        ax.set(xlabel="restored layer", title=f"{t['fact'][0]!r} →{t['fact'][1]!r} ({name}; * = noised)")
        ax.title.set_fontsize(8)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    lab.savefig(fig, "causal_trace")


def test_hidden_states_carry_the_fact_at_the_last_subject_token_then_the_last_token(lab, measured):
    s = _record(lab, measured)
    assert len(measured["known"]) >= 5, f"the model knows only {len(measured['known'])} of {measured['n_facts']} facts"
    assert s["subject_peak"] >= 0.3, f"last subject token carries at most {s['subject_peak']:.2f} in layers 0–19"
    assert s["last_token_early"] < 0.1, f"last token already carries {s['last_token_early']:.2f} in layers 0–9"
    assert s["last_token_final"] >= 0.7, f"last token at layer 27 carries only {s['last_token_final']:.2f}"
    # control: a corrupted token that is neither the subject nor the last one does ~nothing
    assert s["control_max"] <= 0.1 and s["control_max"] < s["subject_peak"] / 3, (
        f"first subsequent token carries up to {s['control_max']:.2f} (last subject peak {s['subject_peak']:.2f})")


@pytest.mark.xfail(strict=True, reason=(
    "first look (seed 0, 13 facts): MLP windows at the last subject token restore 0.15 (layers 0–2) and 0.14 "
    "(4–8) but ≤ 0.01 in layers 10–19. Hypothesis: a 30-layer 135M model resolves the subject within its first "
    "few layers — often at a middle subject token ('iffel' of 'Eiffel Tower') — so its 'early site' is early "
    "MLPs, and the hidden state at the last subject token is copied onward by attention rather than built by "
    "middle-layer MLPs as in GPT-2 XL"))
def test_mid_layer_mlps_at_the_last_subject_token(lab, measured):
    s = _record(lab, measured)
    assert s["mlp_mid_peak"] >= 0.1, (
        f"MLP windows at the last subject token restore only {s['mlp_mid_peak']:.3f} in layers 10–19 "
        f"(overall peak {s['mlp_peak']:.3f} at layer {s['mlp_peak_layer']})")
