"""A sparse autoencoder (dictionary learning) on one residual-stream hook, and how to grade it.

Bricken et al. (2023, "Towards Monosemanticity") and Cunningham et al. (2023, arXiv 2309.08600)
decompose activations x ∈ R^d into a sparse, non-negative code over an overcomplete dictionary:

    f  = ReLU(W_enc (x̃ − b_dec) + b_enc)         (n,)  the latents ("features")
    x̂̃ = W_dec f + b_dec                          (d,)  the reconstruction
    loss = ‖x̃ − x̂̃‖² + λ ‖f‖₁                          (MSE summed over d, mean over tokens)

where x̃ = x / s is the activation rescaled so that E‖x̃‖² = d (Anthropic's April 2024 update; it makes
λ mean the same thing at every layer and for every model). The decoder's columns are kept at unit
norm by renormalising after every Adam step, as Bricken et al. and Cunningham et al. do: with
‖W_dec[:, i]‖ = 1 the L1 penalty cannot be dodged by shrinking f and growing the column, and it is
the version of the papers this instrument is checked against (Anthropic's later alternative, an
unconstrained decoder with λ Σ_i f_i ‖W_dec[:, i]‖, is equivalent at the optimum). Init: W_dec random
unit columns, W_enc = W_decᵀ, b_enc = 0, b_dec = the data mean.

Grading (all on held-out activations):

* fraction of variance explained  FVE = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²   (x̄ = the held-out mean);
* L0 = mean number of active latents per token; dead fraction = latents never active on the set;
* spliced-in loss: next-token CE with the hook's activation replaced by x̂ (a forward hook), against
  the clean CE and against ablating the hook (zero or mean):  ΔCE = CE_spliced − CE_clean,
  loss recovered = (CE_ablate − CE_spliced) / (CE_ablate − CE_clean)  (1 = perfect, 0 = no better
  than ablation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labcore.glassbox.modes import logits_of

__all__ = ["SparseAutoencoder", "activations", "train_sae", "fve", "mean_l0", "dead_fraction", "spliced_ce", "loss_recovered",
           "pca_reconstructor", "direction_recovery"]


def _check_acts(acts: torch.Tensor, d: int | None = None, name: str = "acts") -> None:
    if acts.dim() != 2:
        raise ValueError(f"{name} must be (N, d) activations, got shape {tuple(acts.shape)}: flatten batch and positions")
    if d is not None and acts.shape[1] != d:
        raise ValueError(f"{name} has width {acts.shape[1]} but the SAE was built for d={d}")
    if not torch.isfinite(acts).all():
        raise ValueError(f"{name} holds NaN/inf values: drop those tokens (e.g. an attention-sink position) first")


class _Stop(Exception):
    """Raised by the capture hook: nothing after the hook is needed."""


@torch.no_grad()
def activations(model, windows: torch.Tensor, hook: str, skip_first: bool = True) -> torch.Tensor:
    """The activations at ``hook`` for (n, T) token ``windows``, flattened to (n·T', d).

    The forward stops at the hook (the rest of the model is not run: half the cost at a middle layer).
    ``skip_first`` drops position 0 (T' = T − 1), the attention sink, whose norm can be ~100× the others'.
    """
    if windows.dim() != 2:
        raise ValueError(f"windows must be (n, T) token ids, got shape {tuple(windows.shape)}")
    if hook not in model.hook_names():
        raise ValueError(f"unknown hook {hook!r}: use a name from model.hook_names(), e.g. 'blocks.15.hook_resid_pre'")
    got = {}

    def grab(act, hook=None):
        got["act"] = act.detach()
        raise _Stop

    try:
        with model.hooks(fwd_hooks=[(hook, grab)]):
            model(windows)
    except _Stop:
        pass
    act = got["act"][:, 1:] if skip_first else got["act"]  # (n, T', d)
    return act.reshape(-1, act.shape[-1]).float()


class SparseAutoencoder(nn.Module):
    """f = ReLU(W_enc (x/s − b_dec) + b_enc); x̂ = s (W_dec f + b_dec); unit-norm decoder columns."""

    def __init__(self, d: int, n_latents: int, generator: torch.Generator | None = None):
        super().__init__()
        if d < 1 or n_latents < 1:
            raise ValueError(f"d and n_latents must be ≥ 1 (got d={d}, n_latents={n_latents})")
        w_dec = torch.randn(d, n_latents, generator=generator)  # (d, n)
        w_dec /= w_dec.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)  # (d, n), column i = feature i's direction
        self.W_enc = nn.Parameter(w_dec.T.clone())  # (n, d), tied at init
        self.b_enc = nn.Parameter(torch.zeros(n_latents))  # (n,)
        self.b_dec = nn.Parameter(torch.zeros(d))  # (d,), in the rescaled space
        self.register_buffer("scale", torch.ones(()))  # s: x̃ = x / s

    @property
    def d(self) -> int:
        return self.W_dec.shape[0]

    @property
    def n_latents(self) -> int:
        return self.W_dec.shape[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) raw activations -> (..., n) non-negative latents."""
        return F.relu((x / self.scale - self.b_dec) @ self.W_enc.T + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """(..., n) latents -> (..., d) reconstruction in the raw space."""
        return (f @ self.W_dec.T + self.b_dec) * self.scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def fit_data_(self, acts: torch.Tensor) -> None:
        """s = sqrt(E‖x‖² / d) so that E‖x̃‖² = d; b_dec = mean of x̃."""
        self.scale.copy_((acts.pow(2).sum(-1).mean() / acts.shape[1]).sqrt())
        self.b_dec.copy_((acts / self.scale).mean(0))


def train_sae(acts: torch.Tensor, n_latents: int, l1: float, steps: int, batch: int = 256, lr: float = 1e-3,
              generator: torch.Generator | None = None) -> tuple[SparseAutoencoder, dict[str, list[float]]]:
    """Adam on ‖x̃ − x̂̃‖² + λ‖f‖₁ over random minibatches of ``acts`` (N, d); returns (SAE, curve).

    ``generator`` draws the init and the batch order (the seed). curve: per step ``loss``, ``mse``
    (rescaled space, summed over d) and ``l0`` (active latents per token in the batch).
    """
    _check_acts(acts)
    if l1 < 0 or steps < 1 or batch < 1 or lr <= 0:
        raise ValueError(f"need l1 ≥ 0, steps ≥ 1, batch ≥ 1, lr > 0 (got l1={l1}, steps={steps}, batch={batch}, lr={lr})")
    acts = acts.float()
    sae = SparseAutoencoder(acts.shape[1], n_latents, generator)
    sae.fit_data_(acts)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    curve: dict[str, list[float]] = {"loss": [], "mse": [], "l0": []}
    for _ in range(steps):
        idx = torch.randint(0, acts.shape[0], (min(batch, acts.shape[0]),), generator=generator)
        x_t = acts[idx] / sae.scale  # (B, d), rescaled
        f = F.relu((x_t - sae.b_dec) @ sae.W_enc.T + sae.b_enc)  # (B, n)
        x_hat_t = f @ sae.W_dec.T + sae.b_dec  # (B, d)
        mse = (x_hat_t - x_t).pow(2).sum(-1).mean()
        loss = mse + l1 * f.sum(-1).mean()  # λ‖f‖₁ (decoder columns have unit norm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sae.normalise_decoder_()
        curve["loss"].append(float(loss.detach()))
        curve["mse"].append(float(mse.detach()))
        curve["l0"].append(float((f > 0).float().sum(-1).mean()))
    return sae, curve


def fve(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over the rows of x (N, d)."""
    if x.shape != x_hat.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ in shape")
    x, x_hat = x.double(), x_hat.double()
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def mean_l0(f: torch.Tensor) -> float:
    """Mean number of active (> 0) latents per row of f (N, n)."""
    return float((f > 0).float().sum(-1).mean())


def dead_fraction(f: torch.Tensor) -> float:
    """Fraction of latents (columns of f (N, n)) that are never > 0 on these N rows."""
    return float(((f > 0).sum(0) == 0).float().mean())


@torch.no_grad()
def spliced_ce(model, windows: torch.Tensor, hook: str, replace=None, skip_first: bool = True) -> float:
    """Mean next-token CE (nats/token) of ``model`` on (n, T) ``windows`` with ``replace(act) -> act``
    applied at ``hook`` ((B, T, d) -> (B, T, d)); ``replace=None`` is the clean loss.

    ``skip_first`` leaves position 0 untouched (the attention-sink token, whose residual norm can be ~100×
    the others' (~150× in SmolLM2): it is not in the SAE's data, as is usual for SAE evaluations).
    """
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (n, T ≥ 2) token ids, got shape {tuple(windows.shape)}")

    def fn(act, hook=None):
        new = replace(act)
        if skip_first:
            new = torch.cat([act[:, :1], new[:, 1:]], dim=1)
        return new

    hooks = [] if replace is None else [(hook, fn)]
    with model.hooks(fwd_hooks=hooks):
        logits = logits_of(model(windows))[:, :-1].float()  # (n, T-1, V)
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)))


def loss_recovered(ce_clean: float, ce_spliced: float, ce_ablate: float) -> float:
    """(CE_ablate − CE_spliced) / (CE_ablate − CE_clean): 1 = the splice costs nothing, 0 = as bad as ablating."""
    if ce_ablate <= ce_clean:
        raise ValueError(f"ablating should cost loss (CE_ablate {ce_ablate:.4f} ≤ CE_clean {ce_clean:.4f}): "
                         "pick a hook the model depends on")
    return (ce_ablate - ce_spliced) / (ce_ablate - ce_clean)


def pca_reconstructor(acts: torch.Tensor, k: int):
    """The same-L0 linear baseline: x ↦ x̄ + U_k U_kᵀ (x − x̄), U_k the top-k principal directions of acts."""
    _check_acts(acts)
    if not 0 <= k <= acts.shape[1]:
        raise ValueError(f"k must lie in [0, {acts.shape[1]}] (got {k})")
    mean = acts.double().mean(0)  # (d,)
    _, _, vh = torch.linalg.svd(acts.double() - mean, full_matrices=False)  # vh: (d, d)
    u = vh[:k].T  # (d, k)

    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        c = x.double() - mean
        return (mean + (c @ u) @ u.T).to(x.dtype)

    return reconstruct


def direction_recovery(w_dec: torch.Tensor, true_dirs: torch.Tensor) -> float:
    """Mean over the true directions (d, m) of max_i |cos(true_j, W_dec[:, i])| (Sharkey et al.'s MMCS)."""
    if w_dec.shape[0] != true_dirs.shape[0]:
        raise ValueError(f"decoder rows {w_dec.shape[0]} ≠ true-direction rows {true_dirs.shape[0]}: both are (d, ·)")
    a = F.normalize(w_dec.double(), dim=0)
    b = F.normalize(true_dirs.double(), dim=0)
    return float((b.T @ a).abs().max(dim=1).values.mean())
