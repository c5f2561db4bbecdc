"""Grokking: on modular addition, test accuracy jumps long after train accuracy hit 100 % — with weight decay.

Lab notebook. Power et al. trained small transformers on tables like a + b mod p, seeing only a
fraction of all pairs. The network first memorises the training pairs (train accuracy 100 %, test
accuracy at chance); much later, if it is regularised (weight decay helped most), test accuracy
climbs to 100 % too — "grokking". Nanda et al. reverse-engineered the grokked one-layer model: it
embeds each number as cos/sin of a few key frequencies w_k = 2πk/p and adds angles by trig
identities, so the embedding matrix becomes sparse in the Fourier basis over the tokens.

Setup: p = 53, all 2809 pairs (a, b) → (a + b) mod 53, a random half for training, the other half
for test. Model: a shared embedding E (53 × 32, init N(0, 0.3²)), h = ReLU(W₁[E_a; E_b]) (128
units), logits = W₂h — an MLP on embedded pairs (the brief allowed a 1-layer GPT or an MLP; the MLP
fits the time budget on one core). Full-batch AdamW, lr 1e-2, betas (0.9, 0.98), 1000 steps,
weight decay 1.0; accuracy on both halves every 50 steps. Fourier sparsity: |rfft(E) along the token
axis|² summed over embedding dims, for frequencies 1…26, normalised; "top-5 fraction" = the share of
the 5 largest. A random E spreads over all 26 (≈ 0.2).

Control (must come out the other way): the same run with weight decay 0 memorises just as fast but
does not generalise within the 1000 steps, and its embedding stays unstructured.

Prediction (written after one exploratory pair of runs, seed 0, in a scratch script: wd 1 — train
100 % at step 200, test ≥ 95 % at step 1500, top-5 Fourier fraction 0.62 (init 0.23); wd 0 — test
0.2 % at step 2000, top-5 fraction 0.29): with weight decay, test ≥ 95 % reached ≥ 3× later than
train ≥ 99 %, final test ≥ 95 %, top-5 fraction ≥ 0.45 and ≥ 1.5× the control's; without weight decay
test accuracy ≤ 20 % at step 2000.
First claim-file version (lr 3e-3, 2000 steps): seeds 0–2 and 100 passed, but seed 1 reached test
≥ 95 % only at step 1850 of 2000 and one test took 41–52 s on the shared machine (limit 40 s).
Changed to lr 1e-2 (AdamW's decoupled decay per step is lr·wd, so ≈ 3× faster shrinkage) and 1000
steps. Re-prediction, from one scratch run of seed 1 at the new lr (train ≥ 99 % at step 100, test
≥ 95 % at 650, top-5 fraction 0.71; wd 0 test 0.1 % at step 500): the same four checks with the same
bounds hold on every seed, test ≥ 95 % reached by step ≈ 400–800.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="dynamics_grokking",
    paper="dynamics",
    statement=(
        "“we show that, long after severely overfitting, validation accuracy sometimes suddenly begins to increase "
        "from chance level toward perfect generalization. We call this phenomenon ‘grokking’.” … “weight decay "
        "… is particularly effective at improving generalization” (Power et al.); the grokked network “uses "
        "discrete Fourier transforms and trigonometric identities to convert addition to rotation” and its "
        "embedding is sparse in the Fourier basis, a few key frequencies (Nanda et al.)"
    ),
    source=Source(title="Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets",
                  arxiv="2201.02177", version="v1", where="Abstract; §3.2 (weight decay); Fig. 1"),
    paper_value="train acc 100 % ≫ earlier than val acc; weight decay needed; Fourier-sparse embedding (2301.05217 §4)",
    prediction=(
        "wd 1: test ≥ 95 % reached ≥ 3× later than train ≥ 99 %, final test ≥ 95 %, top-5 Fourier fraction ≥ 0.45 and "
        "≥ 1.5× the control's; control wd 0: test ≤ 20 % at step 1000 (lr 1e-2, 1000 steps; first version lr 3e-3, 2000 steps)."
    ),
    metric=(
        "first step (of every 50) with train acc ≥ 99 % and with test acc ≥ 95 %; final accuracies; share of |rfft(E)|² "
        "in the 5 largest of the 26 non-zero frequencies"
    ),
    tolerance=(
        "delay ratio ≥ 3, final test ≥ 0.95, top-5 fraction ≥ 0.45 and ≥ 1.5× control; control final test ≤ 0.2"
    ),
    tolerance_why=(
        "Bounds from the prediction (one exploratory seed), kept through the lr change. First version (lr 3e-3, "
        "2000 steps): test ≥ 95 % at step 1500–1850 on seeds 0–2 — too close to the budget. lab calibrate seeds 0–4 "
        "(lr 1e-2, 1000 steps): train ≥ 99 % at step 100, test ≥ 95 % at 500–650 (delay 5.0–6.5×, bound 3×; "
        "≥ 350 steps before the end), final test 1.00; top-5 Fourier share 0.62–0.84 vs control 0.26–0.29 (init "
        "0.23–0.24); control final test ≤ 0.14 %. Fresh seeds 100–104: test ≥ 95 % at 450–650 (delay 4.5–6.5×), "
        "top-5 0.70–0.78 vs control 0.25–0.31, control test ≤ 0.21 %; 5/5 pass. A test takes 9–17 s here."
    ),
    tier="quick",
    calibration="fixtures/calibration/dynamics_grokking.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

P, D, HIDDEN, STEPS, EVERY, LR, TOP_K = 53, 32, 128, 1000, 50, 1e-2, 5


class PairMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.E, self.W1, self.W2 = nn.Embedding(P, D), nn.Linear(2 * D, HIDDEN), nn.Linear(HIDDEN, P)
        with torch.no_grad():
            self.E.weight.mul_(0.3)

    def forward(self, a, b):
        return self.W2(torch.relu(self.W1(torch.cat([self.E(a), self.E(b)], -1))))


def fourier_power(E: torch.Tensor) -> np.ndarray:
    """Share of |rfft(E)|² (over tokens, summed over dims) at frequencies 1 … (P−1)/2."""
    power = torch.fft.rfft(E.detach().double(), dim=0).abs().pow(2).sum(1)[1:]
    return (power / power.sum()).numpy()


def top_k_fraction(power: np.ndarray, k: int = TOP_K) -> float:
    return float(np.sort(power)[::-1][:k].sum())


def run(seed: int, weight_decay: float) -> dict:
    a, b = (x.flatten() for x in torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij"))
    y = (a + b) % P
    perm = torch.randperm(P * P, generator=torch.Generator().manual_seed(seed))
    train, test = perm[: P * P // 2], perm[P * P // 2:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PairMLP()
    init_power = fourier_power(model.E.weight)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=weight_decay, betas=(0.9, 0.98))
    at, acc_train, acc_test = [], [], []
    for step in range(1, STEPS + 1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(a[train], b[train]), y[train]).backward()
        opt.step()
        if step % EVERY == 0:
            with torch.no_grad():
                right = model(a, b).argmax(-1) == y
            at.append(step)
            acc_train.append(float(right[train].float().mean()))
            acc_test.append(float(right[test].float().mean()))
    return {"at": np.array(at), "train": np.array(acc_train), "test": np.array(acc_test),
            "power": fourier_power(model.E.weight), "init_power": init_power}


def first_step(at: np.ndarray, acc: np.ndarray, level: float) -> float:
    hit = np.flatnonzero(acc >= level)
    return float(at[hit[0]]) if len(hit) else float("inf")


def test_grokking_needs_weight_decay_and_ends_fourier_sparse(lab):
    grok, control = run(lab.seed, 1.0), run(lab.seed, 0.0)
    t_train, t_test = first_step(grok["at"], grok["train"], 0.99), first_step(grok["at"], grok["test"], 0.95)
    frac, frac_control = top_k_fraction(grok["power"]), top_k_fraction(control["power"])
    frac_init = top_k_fraction(grok["init_power"])
    key = sorted(int(k) + 1 for k in np.argsort(grok["power"])[::-1][:TOP_K])
    lab.record(p=P, step_train_99=t_train, step_test_95=t_test, delay_ratio=t_test / t_train,
               final_test_acc=float(grok["test"][-1]), final_train_acc=float(grok["train"][-1]),
               control_final_test_acc=float(control["test"][-1]),
               control_final_train_acc=float(control["train"][-1]),
               control_step_train_99=first_step(control["at"], control["train"], 0.99),
               top5_fourier_fraction=frac, control_top5_fourier_fraction=frac_control,
               init_top5_fourier_fraction=frac_init, key_frequencies=key)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r, style, name in ((grok, "-", "wd 1"), (control, "--", "wd 0 (control)")):
        axes[0].plot(r["at"], r["train"], style, color="C0", label=f"train, {name}")
        axes[0].plot(r["at"], r["test"], style, color="C3", label=f"test, {name}")
    axes[0].set(xlabel="step", ylabel="accuracy", xscale="log", title=f"a + b mod {P}: memorise, then grok")
    axes[0].legend(fontsize=8)
    freqs = np.arange(1, len(grok["power"]) + 1)
    axes[1].bar(freqs - 0.2, grok["power"], width=0.4, label=f"wd 1 (top-{TOP_K} {frac:.2f})")
    axes[1].bar(freqs + 0.2, control["power"], width=0.4, label=f"wd 0 (top-{TOP_K} {frac_control:.2f})")
    axes[1].set(xlabel="frequency k (w = 2πk/p)", ylabel="share of |FFT(E)|²", title="embedding in the Fourier basis")
    axes[1].legend(fontsize=8)
    lab.savefig(fig, "grokking")

    assert t_test >= 3 * t_train, f"test ≥ 95 % at step {t_test}, train ≥ 99 % at {t_train}: no delay ≥ 3×"
    assert grok["test"][-1] >= 0.95, f"wd 1: final test accuracy {grok['test'][-1]:.3f} < 0.95 — did not grok"
    assert frac >= 0.45 and frac >= 1.5 * frac_control, (
        f"top-{TOP_K} Fourier fraction {frac:.3f} (control {frac_control:.3f}, init {frac_init:.3f})")
    # Control: without weight decay it memorises but does not generalise within the budget.
    assert control["test"][-1] <= 0.2, f"control wd 0: final test accuracy {control['test'][-1]:.3f} > 0.2"
