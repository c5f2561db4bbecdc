"""On normally distributed weights, NF4 has a lower round-trip error than FP4 and Int4.

Lab notebook. QLoRA §3 motivates NF4 by the observation that pretrained weights are roughly
zero-centred normal, and calls it "information-theoretically optimal for zero-centered normally
distributed data". The testable consequence at the tensor level: with the same blockwise
absmax recipe (block 64), NF4's levels — dense near 0, sparse in the tails — reconstruct
Gaussian weights better than evenly spaced Int4 levels ((−7..7)/7) and than bitsandbytes' FP4
(E2M1), which spends a code on a second zero and one on 1/192.

Data: 1.28M N(0, 1) values; a heavier-tailed Student-t(5) variant; and, as the control, uniform
U(−1, 1) values, where NF4's Gaussian-shaped grid should *lose* to Int4's even grid — NF4 wins
because the data are Gaussian, not because it is a better code in general. Measured (seeds 0–4):
N(0,1) RMSE NF4 0.0919–0.0920, Int4 0.1075–0.1078, FP4 0.1219–0.1220; t(5) 0.134–0.137 /
0.187–0.191 / 0.197–0.201; uniform 0.0526–0.0528 / 0.0403 / 0.0640–0.0641 (Int4 best, as it
should be).
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from labcore.finetuning import quant as Q
from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="qlora_gaussian_error",
    paper="qlora",
    statement=(
        "“4-bit NormalFloat (NF4), a new data type that is information theoretically optimal for "
        "normally distributed weights” (abstract); “Since pretrained neural network weights usually "
        "have a zero-centered normal distribution with standard deviation σ (see Appendix F) …” (§3)"
    ),
    source=Source(
        title="QLoRA: Efficient Finetuning of Quantized LLMs", arxiv="2305.14314", version="v1",
        where="abstract; §3 “4-bit NormalFloat Quantization”",
    ),
    paper_value="NF4 best 4-bit type for normal weights (Table 2 ordering NF4 < FP4 < Int4 in perplexity)",
    prediction="RMSE(NF4) ≤ 0.95 × min(RMSE(FP4), RMSE(Int4)) on N(0,1) and t(5); on uniform data Int4 beats NF4.",
    metric="root-mean-square round-trip error, blockwise absmax, block 64, 1.28M values (t(5): 256k; uniform: 256k)",
    tolerance="RMSE(NF4) ≤ 0.95 · min(others) on N(0,1) and t(5); control: RMSE(Int4) < RMSE(NF4) on uniform",
    tolerance_why=(
        "Measured (seeds 0–4): RMSE(NF4)/min(others) = 0.852–0.855 on N(0,1) and 0.715–0.719 on "
        "t(5); the RMSE of 1.28M values varies by < 0.1 % between seeds, so the 5 % margin is > 50 "
        "standard errors from failing by chance and < ⅓ of the observed gap."
    ),
    tier="quick",
    calibration="fixtures/calibration/qlora_gaussian_error.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

KINDS = ("nf4", "fp4", "int4")


def test_nf4_has_lowest_error_on_gaussian_weights(lab):
    g = torch.Generator().manual_seed(lab.seed)
    normal = torch.randn(1_280_000, generator=g)
    z = torch.randn(256_000, generator=g)
    chi2 = torch.randn(256_000, 5, generator=g).pow(2).sum(1)
    data = {
        "normal": normal,
        "student_t5": z / torch.sqrt(chi2 / 5),  # t(5) = N(0,1) / sqrt(χ²₅ / 5), same generator
        "uniform": torch.rand(256_000, generator=g) * 2 - 1,
    }
    rmse = {name: {k: Q.quantization_error(x, k) for k in KINDS} for name, x in data.items()}
    lab.record(**{f"rmse_{name}": v for name, v in rmse.items()},
               margin_normal=rmse["normal"]["nf4"] / min(rmse["normal"]["fp4"], rmse["normal"]["int4"]),
               margin_t5=rmse["student_t5"]["nf4"] / min(rmse["student_t5"]["fp4"], rmse["student_t5"]["int4"]))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(data))
    for i, k in enumerate(KINDS):
        ax.bar(x + (i - 1) * 0.27, [rmse[n][k] for n in data], 0.27, label=k.upper())
    ax.set_xticks(x, list(data))
    ax.set(ylabel="RMSE (block 64, absmax)", title="4-bit round-trip error by data type")
    ax.legend(fontsize=8)
    lab.savefig(fig, "rmse_by_dtype")

    for name in ("normal", "student_t5"):
        r = rmse[name]
        assert r["nf4"] <= 0.95 * min(r["fp4"], r["int4"]), f"{name}: {r}"
    assert rmse["uniform"]["int4"] < rmse["uniform"]["nf4"], f"control (uniform data): {rmse['uniform']}"
