"""QLoRA through unsloth's API on a base that 4-bit quantisation hurts: the adapters recover the damage.

Lab notebook. unsloth is how many people actually run QLoRA: ``FastLanguageModel.from_pretrained(
..., load_in_4bit=True)`` then ``FastLanguageModel.get_peft_model(...)``. QLoRA's central claim
(§4, Tables 3–4) is that LoRA on the NF4 + DQ base matches 16-bit LoRA — "the performance lost
due to the imprecise quantization can be fully recovered through adapter finetuning after
quantization". This claim runs that experiment through unsloth (``labcore.pretrained.unsloth_backend``).

Redesigned after the 2026-12 audit. The first version compared a tiny Llama loaded in 4 bits with
the same model unquantised; but that model lost only 0.0004 ± 0.007 nats to NF4 before any
training, so "within 2 σ_seed = 0.087 nats" could not fail (it would have passed with adapters that
recover nothing). Now, as in ``qlora_matches_lora_small``, quantisation must hurt and the claim is
the *recovery*:

* base: a tiny Llama (2 blocks, d=128, character tokenizer over the lab corpus, 0.3 M parameters,
  ``build_tiny_llama``) pre-trained here for 200 steps on prose only (so code is new to it), then
  given **outlier features** by a function-preserving reparametrisation
  (``labcore.finetuning.outliers.inject_outlier_features``, s = SCALE: channels 7 and 71 of the
  residual stream divided by s in the RMSNorm gains and multiplied by s in every weight column that
  reads them): the fp32 model is the same function, but every 64-block of q, k, v, o, gate, up now
  holds one weight ~s× the rest, the structure that makes 4-bit quantisation hurt large LLMs
  (LLM.int8(), arXiv 2208.07339). A stand-in, as in claims/qlora/test_nf4_vs_fp4_finetuned.py.
* arms, each loaded by unsloth from that folder, LoRA r=8, α=16 on q, k, v, o, gate, up, down, the
  same ``random_state`` (same A) and the same batches, 160 AdamW steps at lr 3e-3, batch 8 × 64
  characters of code, fp32 compute (``dtype=torch.float32``) so only the 4-bit storage differs:
  **16-bit LoRA** (``load_in_4bit=False``): L_lora; **QLoRA** (``load_in_4bit=True``, unsloth's NF4 +
  DQ): L_qlora; control **LoRA, then quantise**: the trained 16-bit model with its frozen base
  weights quantised to NF4 + DQ afterwards (the hand-written quantiser, which equals bitsandbytes'
  NF4 bit for bit): L_naive; control **4-bit base, no adapters**: L_q0.
* metric: mean loss (nats/char) after training (eval mode) on every whole 64-character window of
  the code corpus (101 windows, the text the adapters were trained on: this measures the fit, as
  QLoRA's "matches 16-bit LoRA" does). Damage G = L_naive − L_lora; recovery R = (L_naive −
  L_qlora) / G, recorded with its standard error over the windows (delta method). The no-adapter
  arm's recovery on the same scale must fail the bound.

Why 160 steps and all windows (redesign of 2026-12-05, chosen on exploration seeds 0–4 only). The
first version (40 steps, the first 16 windows) passed 9 of 10 seeds; seed 3 recovered 0.75. Its
noise has two parts, measured separately on seeds 0–4 by evaluating at steps 40/80/120/160 on
both window sets (a scratch script, same code path): (1) *eval noise* — the first 16 windows are
one contiguous stretch of the file, not a sample: seed 3's residual L_qlora − L_lora was +0.062 on
them and +0.020 ± 0.007 on all 101 windows (R 0.75 → 0.93 with the same two models); the paired
standard error of R over 101 windows is ≈ 0.02. (2) *trajectory noise* — QLoRA and LoRA are two
training runs on different bases, and their final losses differ by a seed-dependent ≈ ±0.05
nats/char (−0.10 … +0.04) that does not shrink with more windows or more steps. What does change
with steps is the damage: G grows from 0.16–0.36 at 40 steps to 0.43–0.70 at 160 (presumably: the
adapters lean harder on the exact base weights the further they move), so the fixed ≈ 0.05-nat residual
becomes ≈ 0.1 of G instead of ≈ 0.3, and R's seed-to-seed spread (σ ≈ 0.1) sits ≈ 2 σ clear of 0.8.
The bound 0.8 was not moved. 160 steps costs ≈ 9 s more per run (≈ 40 s in all on the 2-core CPU).

unsloth pins transformers ≤ 5.17 and so lives in ``.venv-unsloth`` (``bash scripts/setup-unsloth.sh``,
built by ``.ci/run`` unless LAB_CI_UNSLOTH=0); in the main ``.venv`` this file skips with that
instruction. On a CPU unsloth runs stock transformers + peft + bitsandbytes (no custom kernels), so
this tests the API and the numerics, never speed (claims/lora/test_full_unsloth.py is the GPU tier).

Prediction for the first version (written before any run of it): G ≥ 0.03 nats/char; R ≥ 0.8;
no-adapter R < 0.8. Prediction for the 160-step redesign, written after the seed 0–4 exploration
above and before the confirming seeds 200–204 were run: G ≥ 0.3, R within 0.8–1.3, no-adapter R
far below 0 on every seed. Measured: see the calibration tables named in the CLAIM record.
"""

import copy

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="qlora_unsloth_matches_lora",
    paper="qlora",
    statement=(
        "“Our results consistently show that 4-bit QLoRA with NF4 data type matches 16-bit full "
        "finetuning and 16-bit LoRA finetuning performance on academic benchmarks with "
        "well-established evaluation setups.”"
    ),
    source=Source(title="QLoRA: Efficient Finetuning of Quantized LLMs", arxiv="2305.14314", version="v1",
                  where="§4 'Summary', Tables 3–4"),
    paper_value="NF4+DQ QLoRA within ±0.1 of 16-bit LoRA on Super-NaturalInstructions (T5-80M…3B); MMLU 53.1 vs 53.0",
    prediction=(
        "Through unsloth on a CPU, on a tiny Llama with outlier features (so that NF4 hurts): the damage "
        "G = L(LoRA, then quantise) − L(16-bit LoRA) ≥ 0.03 nats/char and QLoRA recovers ≥ 80 % of it; "
        "the 4-bit base without adapters does not."
    ),
    metric=(
        "final mean next-token loss (nats/char) after 160 steps on all 101 code windows of 64 characters; "
        "recovery R = (L_naive − L_qlora) / (L_naive − L_lora), with its standard error over the windows"
    ),
    tolerance="G ≥ 0.03 (control: quantisation must hurt); R(QLoRA) ≥ 0.8; control: R(no adapters) < 0.8; "
              "fine-tuning drop ≥ 0.3 nats in both arms",
    tolerance_why=(
        "Bounds carried over from qlora_matches_lora_small (G ≥ 0.03, R ≥ 0.8, set there before its sweep) and "
        "never moved. The first version (40 steps, first 16 code windows) passed seeds 0–4 4/5 (seed 3: R 0.75) "
        "and 100–104 5/5: 9/10, below the 95 % target. Seeds 0–4 then chose the redesign (160 steps, all 101 "
        "windows; see the docstring: the residual QLoRA − LoRA is a ≈ ±0.05-nat training-trajectory difference "
        "that does not shrink, while G grows with steps) — seeds 100–104 had been seen, so they chose nothing "
        "but count as seen. Redesign, unsloth 2026.10.9 in .venv-unsloth on the 2-core CPU: seeds 0–4 "
        "(fixtures/calibration/qlora_unsloth_matches_lora.json) 5/5; untouched seeds 200–204 (.fresh.json, "
        "run once after the code was final, nothing chosen from them) 5/5. See the tables for G, R (with its "
        "eval-window standard error, ≈ 0.02: the seed-to-seed spread of R, ≈ 0.1, is the larger noise) and the "
        "no-adapter recovery (far below 0 on every seed: the control fails the bound, as it must). 0.8 sits "
        "≈ 2.3 seed-σ below the median R and ≈ 1.3 seed-σ below the smallest R of the 10 seeds."
    ),
    tier="quick",
    calibration="fixtures/calibration/qlora_unsloth_matches_lora.json",
    status="confirmed",  # redesign passed untouched seeds 200-204 (<claim>.fresh.json)
)

SEQ, PRE_STEPS, STEPS, BATCH, LR, RANK, ALPHA = 64, 200, 160, 8, 3e-3, 8, 16
SCALE = 30.0  # outlier feature size (labcore.finetuning.outliers)
GAP_MIN, R_MIN, DROP_MIN = 0.03, 0.8, 0.3


@pytest.fixture(scope="module")
def unsloth_api():
    from labcore.pretrained.unsloth_backend import unsloth_status

    ok, reason = unsloth_status()
    if not ok:
        pytest.skip(reason)
    import labcore.pretrained.unsloth_backend as backend

    return backend


def _char_windows(text: str, tokenizer, seq: int) -> torch.Tensor:
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    n = ids.numel() // seq
    return ids[: n * seq].view(n, seq)


def _window_losses(model, windows: torch.Tensor) -> torch.Tensor:
    """(n_windows,) mean next-token loss of each window; their mean is the eval loss (equal lengths)."""
    from labcore.pretrained.corpus import token_losses

    was_training = model.training
    model.eval()
    losses = token_losses(model, windows).view(windows.shape[0], -1).mean(1).double()
    model.train(was_training)
    return losses


def _ratio_with_se(num: torch.Tensor, den: torch.Tensor) -> tuple[float, float]:
    """mean(num) / mean(den) over paired windows and its standard error over windows (delta method:
    the ratio's influence of window i is (num_i − R·den_i) / mean(den)). Says how much a different
    text of the same size could move R — the eval noise, not the seed-to-seed one."""
    ratio = float(num.mean() / den.mean())
    influence = (num - ratio * den) / den.mean()
    return ratio, float(influence.std() / influence.numel() ** 0.5)


def _lora_then_quantise(model):
    """A copy of the trained 16-bit peft model whose frozen base weights are fake-quantised to NF4 +
    DQ (block 64), adapters and output layer untouched: what 4-bit storage does to it afterwards."""
    from labcore.finetuning.quantized import fake_quantize_model

    model = copy.deepcopy(model)
    fake_quantize_model(model, "nf4", double_quant=True,
                        name_filter=lambda n: "lora_" not in n and n.rsplit(".", 1)[-1] != "lm_head")
    return model


@pytest.fixture(scope="module")
def experiment(unsloth_api, lab_seed, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labcore.finetuning.outliers import inject_outlier_features
    from labcore.pretrained.corpus import causal_lm_loss, eval_loss, load_text, random_windows
    from labcore.training.trainer import TrainConfig, train

    backend = unsloth_api
    prose, code = load_text("prose"), load_text("code")
    folder = tmp_path_factory.mktemp("tiny-llama")
    backend.build_tiny_llama(folder, prose + code, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prose_ids = torch.tensor(tokenizer(prose, add_special_tokens=False)["input_ids"])
    code_ids = torch.tensor(tokenizer(code, add_special_tokens=False)["input_ids"])
    eval_windows = _char_windows(code, tokenizer, SEQ)  # every whole 64-char window of the code corpus

    # pre-train the tiny base on prose only (plain transformers): code is new to it; then plant the
    # outlier features (same function) and save it for unsloth
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    pre = train(base, lambda step, g: (random_windows(prose_ids, SEQ, 16, g),) * 2,
                TrainConfig(steps=PRE_STEPS, lr=3e-3, seed=lab_seed, track_update_ratio=False,
                            schedule="warmup_cosine", warmup_steps=20),
                loss_fn=causal_lm_loss)
    base.eval()
    before_outliers = eval_loss(base, eval_windows)
    inject_outlier_features(base, SCALE)
    out = {"pretrain_final_loss": float(pre.metrics["loss"][-20:].mean()),
           "reparametrisation_shift": eval_loss(base, eval_windows) - before_outliers}
    base.save_pretrained(folder)

    for arm, four_bit in (("nf4_dq", True), ("fp32", False)):
        model, _ = backend.load_model(folder, load_in_4bit=four_bit, max_seq_length=SEQ, dtype=torch.float32)
        n_4bit = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
        model = backend.add_lora(model, r=RANK, alpha=ALPHA, seed=lab_seed)
        before = _window_losses(model, eval_windows)  # B = 0: the loaded base itself (4-bit: the no-adapter arm)
        first_a = next(p for n, p in model.named_parameters() if "lora_A" in n).detach().clone()
        run = train(model, lambda step, g: (random_windows(code_ids, SEQ, BATCH, g),) * 2,
                    TrainConfig(steps=STEPS, lr=LR, seed=lab_seed, track_update_ratio=False),
                    loss_fn=causal_lm_loss)
        model.eval()
        out[arm] = {"before": before, "after": _window_losses(model, eval_windows), "curve": run.metrics["loss"],
                    "seconds": run.seconds, "n_linear4bit": n_4bit, "first_a": first_a,
                    "n_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        if not four_bit:
            out["lora_then_quantise"] = _window_losses(_lora_then_quantise(model), eval_windows)
        del model
    return out


def test_unsloth_qlora_recovers_the_quantisation_damage(lab, experiment):
    q, f = experiment["nf4_dq"], experiment["fp32"]
    import unsloth

    assert q["n_linear4bit"] > 0 and f["n_linear4bit"] == 0, "the 4-bit arm is not 4-bit (or the other one is)"
    assert torch.equal(q["first_a"], f["first_a"]), "the two arms did not start from the same LoRA A"
    w_lora, w_qlora, w_naive, w_q0 = f["after"], q["after"], experiment["lora_then_quantise"], q["before"]
    l_lora, l_qlora, l_naive, l_q0 = (float(w.mean()) for w in (w_lora, w_qlora, w_naive, w_q0))
    gap = l_naive - l_lora  # G: the damage of quantising after the fact
    recovery, recovery_se = _ratio_with_se(w_naive - w_qlora, w_naive - w_lora)  # R ± its eval-window SE
    recovery_no_adapters = (l_naive - l_q0) / gap
    residual = w_qlora - w_lora  # per-window QLoRA − LoRA
    lab.record(
        unsloth_version=unsloth.__version__, pretrain_final_loss=experiment["pretrain_final_loss"],
        reparametrisation_shift=experiment["reparametrisation_shift"], scale=SCALE,
        **{f"{arm}_{k}": float(experiment[arm][k].mean()) for arm in ("nf4_dq", "fp32") for k in ("before", "after")},
        **{f"{arm}_{k}": experiment[arm][k] for arm in ("nf4_dq", "fp32")
           for k in ("seconds", "n_linear4bit", "n_trainable")},
        n_eval_windows=len(w_lora), loss_lora_then_quantise=l_naive, gap=gap, recovery=recovery,
        recovery_se_windows=recovery_se, recovery_no_adapters=recovery_no_adapters,
        residual_qlora=float(residual.mean()), residual_qlora_se_windows=float(residual.std() / len(residual) ** 0.5),
        ptq_gap_before_training=float((q["before"] - f["before"]).mean()),
    )
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(np.arange(1, STEPS + 1), f["curve"], label=f"16-bit LoRA (final {l_lora:.3f})", color="C0")
    ax.plot(np.arange(1, STEPS + 1), q["curve"], label=f"QLoRA NF4+DQ (final {l_qlora:.3f})", color="C1")
    ax.axhline(l_naive, color="C3", ls="--", label=f"LoRA, then quantise: {l_naive:.3f}")
    ax.set(xlabel="step", ylabel="training loss (nats/char)",
           title=f"unsloth {unsloth.__version__} on CPU, tiny Llama, outliers ×{SCALE:g}: R {recovery:.0%}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    lab.savefig(fig, "unsloth_qlora_vs_lora")

    assert abs(experiment["reparametrisation_shift"]) < 1e-3, "the outlier reparametrisation changed the fp32 model"
    for arm in ("nf4_dq", "fp32"):
        drop = float((experiment[arm]["before"] - experiment[arm]["after"]).mean())
        lab.record(**{f"drop_{arm}": drop})
        assert drop >= DROP_MIN, f"{arm}: fine-tuning lowered the code loss by only {drop:.3f} nats (control)"
    assert gap >= GAP_MIN, f"control: quantising the fine-tuned model costs only {gap:.4f} nats/char: nothing to recover"
    assert recovery_no_adapters < R_MIN, f"control: the 4-bit base without adapters 'recovers' {recovery_no_adapters:.2f}"
    assert recovery >= R_MIN, (
        f"QLoRA through unsloth recovers {recovery:.2f} ± {recovery_se:.2f} of the quantisation damage G = {gap:.4f} "
        f"(< {R_MIN}): "
        f"L_qlora {l_qlora:.4f}, L_lora {l_lora:.4f}, L_naive {l_naive:.4f}")
