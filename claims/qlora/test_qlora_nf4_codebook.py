"""NF4: sixteen quantiles of N(0, 1), asymmetric so that zero is exact.

Lab notebook. QLoRA §3 builds the 4-bit NormalFloat type from quantiles of a standard normal,
normalised to [−1, 1]. A symmetric quantile code has no exact 0 (zero padding and zero weights
would get rounded), so the paper takes 2^{k−1} = 8 quantiles for the negative half and
2^{k−1} + 1 = 9 for the positive half (each including 0), merges them and drops one zero: 7
negative values, 0, and 8 positive values. Appendix E lists the 16 numbers; bitsandbytes ships
the same table (``get_4bit_type('nf4')``, built by ``create_normal_map`` with offset
0.9677083 = ½[(1 − 1/30) + (1 − 1/32)]).

We rebuild the code from scipy's ``norm.ppf`` (labcore.finetuning.quant.nf4_codebook) and compare it with
the appendix and with bitsandbytes. Control: the naive *symmetric* 16-quantile code — the
quantiles at the centres of 16 equal-probability bins, with no special zero — misses the table
by ≥ 0.01 and has no zero, so the comparison can tell the two constructions apart.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import norm

from labcore.finetuning import quant as Q

from labcore.finetuning import quantized as QM
from labcore.notebook.claims import Claim, Source

NF4_APPENDIX_E = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]

CLAIM = Claim(
    id="qlora_nf4_codebook",
    paper="qlora",
    statement=(
        "“To ensure a discrete zeropoint of 0 and to use all 2^k bits for a k-bit datatype, we create "
        "an asymmetric data type by estimating the quantiles q_i of two ranges q_i: 2^{k−1} for the "
        "negative part and 2^{k−1} + 1 for the positive part and then we unify these sets of q_i and "
        "remove one of the two zeros that occurs in both sets.”"
    ),
    source=Source(
        title="QLoRA: Efficient Finetuning of Quantized LLMs", arxiv="2305.14314", version="v1",
        where="§3 “4-bit NormalFloat Quantization”; Appendix E (the NF4 values)",
    ),
    paper_value="16 values from −1 to 1 (App. E), exact 0, 7 negative and 8 positive",
    prediction="Our scipy construction equals App. E to 1e-6 and bitsandbytes' table bit for bit.",
    metric="max |ours − App. E|; torch.equal(ours, bitsandbytes); counts of negative/zero/positive values",
    tolerance="≤ 1e-6 against App. E; bitwise against bitsandbytes; structure exact; control: symmetric code misses by ≥ 1e-2",
    tolerance_why=(
        "App. E prints the float32 values with 7–8 significant digits, so 1e-6 is the printed "
        "precision; bitsandbytes' table is computed the same way in float32, so it is equal exactly."
    ),
    tier="quick",
    calibration="fixtures/calibration/qlora_nf4_codebook.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)


def _symmetric_quantile_code():
    """The naive symmetric code: the N(0,1) quantiles at the centres of 16 equal-probability bins,
    (i + ½)/16, normalised to [−1, 1]. It has no zero (8 negative, 8 positive values)."""
    q = norm.ppf((np.arange(16) + 0.5) / 16)
    return torch.tensor(q / np.abs(q).max(), dtype=torch.float32)


def test_nf4_codebook_is_the_papers(lab):
    ours = Q.nf4_codebook()
    bnb_table = QM.bnb_nf4_codebook() if QM.bnb_available() else None
    paper = torch.tensor(NF4_APPENDIX_E, dtype=torch.float64)
    err = float((ours.double() - paper).abs().max())
    offset = 0.5 * ((1 - 1 / (2 * 15)) + (1 - 1 / (2 * 16)))
    naive = _symmetric_quantile_code()
    naive_err = float((naive.double().sort().values - paper).abs().max())
    counts = {"negative": int((ours < 0).sum()), "zero": int((ours == 0).sum()), "positive": int((ours > 0).sum())}
    lab.record(
        max_abs_err_vs_appendix=err, equals_bitsandbytes=bool(bnb_table is not None and torch.equal(ours, bnb_table)),
        counts=counts, offset=offset, offset_in_code=Q.NF4_OFFSET, control_symmetric_code_err=naive_err,
        control_symmetric_has_zero=bool((naive == 0).any()),
    )

    fig, ax = plt.subplots(figsize=(6, 3.6))
    idx = np.arange(16)
    ax.plot(idx, ours.numpy(), "o", label="NF4 (ours = App. E = bitsandbytes)")
    ax.plot(idx, naive.numpy(), "x", label="symmetric 16-quantile code (no zero)")
    ax.plot(np.arange(15) + 0.5, Q.int4_codebook().numpy(), "s", ms=3, alpha=0.6, label="Int4 (−7..7)/7")
    grid = np.linspace(0, 15, 200)
    ax.plot(grid, norm.ppf(np.clip((grid + 0.5) / 16, 1e-3, 1 - 1e-3)) / norm.ppf(1 - 0.5 / 16), "k:", lw=0.8,
            label="N(0,1) quantile curve (scaled)")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(xlabel="code index", ylabel="value", title="NF4 codebook vs normal quantiles")
    ax.legend(fontsize=7)
    lab.savefig(fig, "nf4_codebook")

    assert err <= 1e-6, f"NF4 differs from App. E by {err:.3g}"
    if bnb_table is not None:
        assert torch.equal(ours, bnb_table), "NF4 differs from bitsandbytes' table"
    assert counts == {"negative": 7, "zero": 1, "positive": 8}
    assert ours[0] == -1.0 and ours[-1] == 1.0 and bool(torch.all(ours[1:] > ours[:-1]))
    assert abs(offset - Q.NF4_OFFSET) < 1e-7
    assert naive_err >= 1e-2 and not (naive == 0).any(), "control: the symmetric code should differ"
