"""The hardware decision: GPU memory and time per planned experiment, per card (``lab hardware``).

Estimates from formulas, not measurements — every constant says where it comes from, and the
numbers to replace them with are what the claims record (``peak_memory_bytes``, ``tokens_per_s``,
``flops_per_s``; see ``lab.throughput``). docs/hardware.md explains the reasoning.

Memory (bytes) = weights + gradients + Adam states + activations + logits + CUDA context
  weights      frozen base at its storage width (fp32 4, bf16 2, NF4+DQ 4.127/8 per parameter,
               plus bitsandbytes' 1092 bytes of code tables per quantised layer) + trainable
               parameters in fp32 (4 each: LoRA factors, or the fp32 master weights)
  gradients    4 bytes per trainable parameter; Adam 8 (two fp32 moments)
  activations  batch × seq × layers × d_model × k. k = 34 bytes for 16-bit activations with
               fused (flash/SDPA) attention, Korthikanti et al. 2022 (arXiv 2205.05198) eq. 2,
               "sbh(34 + 5as/h)" per layer, whose 5as/h attention-score term fused attention
               does not store; k = 2 (only each layer's input) with gradient checkpointing, plus
               one layer recomputed at a time (34 · batch × seq × d_model); fp32 eager attention
               (labcore's trainer, the wind tunnels): k = 2 × (34 + 5 · heads · seq / d_model)
  logits       batch × seq × vocab × 10 bytes in 16 bit (bf16 logits 2 + the loss' fp32 copy 4
               + its gradient 4), × 12 in fp32
  CUDA context 1 GB (context, cuBLAS workspace, allocator slack: not in max_memory_allocated)
Time per step = max(launch floor, FLOPs / (peak × MFU), bytes read / bandwidth); FLOPs per token
  ≈ 6N for full training, 4N for (Q)LoRA (forward 2N + input gradients 2N; LoRA's own weight
  gradients < 1 %), + 2N when checkpointing recomputes the forward. Attention FLOPs (≤ 2 % here)
  are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9
NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # QLoRA §3: 4.127 bits per quantised weight
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "nf4_dq": NF4_DQ_BITS / 8}
BNB_TABLES_PER_LAYER = 1092  # bitsandbytes' code tables per Linear4bit (measured: qlora_smollm2_footprint)
TRAINABLE_BYTES = {"weight": 4, "gradient": 4, "adam": 8}  # per trainable parameter, fp32
K_16BIT, K_CHECKPOINTED = 34.0, 2.0
CUDA_CONTEXT_BYTES = 1.0 * GB
# Measured on an NVIDIA H200 through labcore's trainer: the wind-tunnel models train at ~40
# steps/s ≈ 6 TFLOP/s, < 1 % of the card's bf16 peak — the Python loop and kernel launches bound
# them, so a faster GPU does not make them faster. Used as a per-step floor for every experiment.
LAUNCH_BOUND_STEPS_PER_S = 40.0
# Assumed model-FLOPs utilisation until a GPU run measures it (flops_per_s / peak). Large-scale
# pre-training reports 38–43 % bf16 MFU on H100s (Llama 3, arXiv 2407.21783, Table 4) and 46 %
# (PaLM, arXiv 2204.02311, §4.1); single-GPU fine-tuning at batch 4 does not beat that: 35 %.
# QLoRA de-quantises every weight in each pass: assumed 0.7 × that, 25 % (no citation: measure it).
MFU = {"full": 0.35, "lora16": 0.35, "qlora": 0.25, "wind_tunnel": 0.35}
# Dense (no sparsity) tensor-core peaks in FLOP/s from the vendors' datasheets, (bf16, tf32), by a
# part of the name torch.cuda.get_device_name() reports; SXM parts (PCIe/NVL boards clock lower).
GPU_PEAKS = {
    "H200": (989e12, 494e12), "H100": (989e12, 494e12), "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12), "L4": (121e12, 60e12), "RTX 4090": (165e12, 83e12),
    "RTX 5090": (209e12, 105e12), "RTX 5080": (113e12, 56e12), "RTX 5070 Ti": (88e12, 44e12),
    "RTX 5060 Ti": (47e12, 24e12), "RTX 3090": (71e12, 36e12),
}


def peak_flops(gpu_name: str, precision: str = "bf16") -> float:
    """The GPU's dense peak for ``precision`` (bf16; anything else is counted at the TF32 peak),
    NaN for a GPU missing from GPU_PEAKS (add its row)."""
    for key, (bf16, tf32) in GPU_PEAKS.items():
        if key.lower() in gpu_name.lower():
            return bf16 if precision == "bf16" else tf32
    return float("nan")


@dataclass(frozen=True)
class Card:
    name: str
    memory_gb: float
    bf16_tflops: float  # dense, FP32 accumulate (what torch's bf16 matmuls use)
    bandwidth_gbs: float
    source: str
    approximate: bool = False


CARDS: tuple[Card, ...] = (
    Card("RTX 5060 Ti 16GB", 16, 47, 448, "NVIDIA RTX 5060 Ti product page: 759 AI TOPS (FP4, sparse) "
         "→ ≈ 95 TFLOP/s FP16 dense, halved for FP32 accumulate as on other GeForce cards; 448 GB/s", True),
    Card("RTX 3090 24GB", 24, 71, 936, "NVIDIA Ampere GA102 whitepaper, appendix: BF16 tensor, FP32 accumulate"),
    Card("RTX 4090 24GB", 24, 165, 1008, "NVIDIA Ada Lovelace whitepaper, appendix: FP16/BF16 tensor, FP32 accumulate"),
    Card("RTX 5090 32GB", 32, 209, 1792, "NVIDIA RTX Blackwell GPU architecture whitepaper (GeForce table)", True),
    Card("A100 80GB", 80, 312, 2039, "NVIDIA A100 datasheet (SXM 80GB): BF16 312 TFLOP/s dense"),
    Card("H100 80GB", 80, 989, 3350, "NVIDIA H100 datasheet (SXM): BF16 1,979 TFLOP/s with sparsity → 989 dense"),
)
YOURS = CARDS[0]


@dataclass(frozen=True)
class ModelShape:
    """A decoder's shape; parameter counts follow from it (Llama-style when ``gated``)."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab: int
    tied: bool
    gated: bool = True      # SwiGLU: gate, up, down; else GELU: up, down
    n_positions: int = 0    # learned position embeddings (the glass-box wind tunnels)

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer in one block."""
        d, kv = self.d_model, self.d_model // self.n_heads * self.n_kv_heads
        mlp = [(d, self.d_ff)] * (2 if self.gated else 1) + [(self.d_ff, d)]
        return [(d, d), (d, kv), (d, kv), (d, d), *mlp]

    @property
    def linear_params(self) -> int:
        return self.n_layers * sum(i * o for i, o in self.linear_shapes())

    @property
    def rest_params(self) -> int:
        """Embeddings (×2 when untied), learned positions, norms: what 4-bit QLoRA keeps in 16 bit."""
        embed = self.vocab * self.d_model * (1 if self.tied else 2) + self.n_positions * self.d_model
        return embed + (2 * self.n_layers + 1) * self.d_model

    @property
    def n_params(self) -> int:
        return self.linear_params + self.rest_params

    def lora_params(self, rank: int) -> int:
        """LoRA on every linear layer of every block: r · (in + out) each."""
        return self.n_layers * sum(rank * (i + o) for i, o in self.linear_shapes())


SMOLLM2_135M = ModelShape("SmolLM2-135M", 30, 576, 9, 3, 1536, 49152, tied=True)
LLAMA_32_1B = ModelShape("Llama-3.2-1B", 16, 2048, 32, 8, 8192, 128256, tied=True)
LLAMA_32_3B = ModelShape("Llama-3.2-3B", 28, 3072, 24, 8, 8192, 128256, tied=True)
LLAMA_2_7B = ModelShape("Llama-2-7B", 32, 4096, 32, 32, 11008, 32000, tied=False)
QWEN_25_14B = ModelShape("Qwen2.5-14B", 48, 5120, 40, 8, 13824, 152064, tied=False)
BIJECTION_V20 = ModelShape("bijection V=20 6L/6H/d192", 6, 192, 6, 6, 768, 40, tied=True, gated=False, n_positions=37)
HMM_PAPER = ModelShape("HMM 9L/8H/d256", 9, 256, 8, 8, 1024, 105, tied=True, gated=False, n_positions=153)


@dataclass(frozen=True)
class Experiment:
    name: str
    model: ModelShape
    method: str            # full | lora16 | qlora | wind_tunnel (full training, fp32, labcore's trainer)
    batch: int
    seq: int
    steps: int
    checkpointing: bool = True
    rank: int = 16

    @property
    def trainable(self) -> int:
        return self.model.lora_params(self.rank) if self.method in ("lora16", "qlora") else self.model.n_params

    @property
    def tokens(self) -> int:
        return self.batch * self.seq * self.steps


def _llm_plan() -> list[Experiment]:
    plan = [Experiment("wind tunnel: bijection V=20 (20k steps, batch 256)", BIJECTION_V20, "wind_tunnel", 256, 37,
                       20_000, checkpointing=False),
            Experiment("wind tunnel: HMM K=20 (8k steps, batch 64)", HMM_PAPER, "wind_tunnel", 64, 93, 8_000,
                       checkpointing=False),
            Experiment("full FT SmolLM2-135M (8×512, 1k steps)", SMOLLM2_135M, "full", 8, 512, 1000, False),
            Experiment("full FT Llama-3.2-1B (4×512, 1k steps, ckpt)", LLAMA_32_1B, "full", 4, 512, 1000)]
    for model, size in ((LLAMA_32_1B, "1B"), (LLAMA_32_3B, "3B"), (LLAMA_2_7B, "7B"), (QWEN_25_14B, "14B")):
        for method, label in (("qlora", "QLoRA"), ("lora16", "LoRA bf16")):
            plan.append(Experiment(f"{label} {size} {model.name} (r16, 4×512, 1k steps, ckpt)", model, method, 4, 512, 1000))
    # the same tokens as 1×512 micro-batches (gradient accumulation 4): the 16 GB way to a 14B model
    plan.append(Experiment("QLoRA 14B Qwen2.5-14B (r16, 1×512 × accum. 4, 1k steps, ckpt)", QWEN_25_14B, "qlora",
                           1, 512, 4000))
    return plan


PLANNED: tuple[Experiment, ...] = tuple(_llm_plan())
#: What each GPU claim runs (mirrors the constants in its file), for its ``needs=`` text.
CLAIM_EXPERIMENTS: dict[str, Experiment] = {
    "bayes_full_bijection": PLANNED[0],
    "bayes_full_hmm": PLANNED[1],
    "qlora_full_local_checkpoint": Experiment("QLoRA Llama-2-7B, 4×256, 50 steps", LLAMA_2_7B, "qlora", 4, 256, 50),
    "qlora_full_unsloth": Experiment("QLoRA Llama-2-7B (unsloth), 4×256, 50 steps", LLAMA_2_7B, "qlora", 4, 256, 50),
}
#: labcore.pretrained.gpu_finetune runs the 16-bit arm only where this × its bf16 weights fit the card
#: (mirrored here because the notebook never imports torch; tests/test_hardware.py keeps them equal).
BF16_LORA_HEADROOM = 1.25
#: The 16-bit LoRA arm a GPU QLoRA claim compares with (its own test, which skips where it cannot fit).
BASELINE_ARMS: dict[str, Experiment] = {
    claim: Experiment(exp.name.replace("QLoRA", "LoRA bf16"), exp.model, "lora16", exp.batch, exp.seq, exp.steps)
    for claim, exp in CLAIM_EXPERIMENTS.items() if exp.method == "qlora"
}


# --- memory --------------------------------------------------------------------------------------


def weight_bytes(model: ModelShape, storage: str, rest: str = "bf16") -> float:
    """Bytes of a model's weights: every parameter at ``storage`` width, except that under NF4+DQ
    only the block linears are quantised and the rest (embeddings, norms) is kept at ``rest``."""
    if storage != "nf4_dq":
        return BYTES_PER_PARAM[storage] * model.n_params
    quantised = BYTES_PER_PARAM["nf4_dq"] * model.linear_params + BNB_TABLES_PER_LAYER * 7 * model.n_layers
    return quantised + BYTES_PER_PARAM[rest] * model.rest_params


def activation_k(exp: Experiment) -> float:
    """Bytes per (sample · token · layer · d_model) kept for the backward pass (module docstring)."""
    if exp.method == "wind_tunnel":
        return 2 * (K_16BIT + 5 * exp.model.n_heads * exp.seq / exp.model.d_model)
    return K_CHECKPOINTED if exp.checkpointing else K_16BIT


def memory_bytes(exp: Experiment) -> dict[str, float]:
    """The memory formula, term by term (bytes), and its ``total``."""
    m, tokens = exp.model, exp.batch * exp.seq
    trainable = exp.trainable
    if exp.method in ("full", "wind_tunnel"):
        weights = TRAINABLE_BYTES["weight"] * m.n_params
    else:
        frozen = weight_bytes(m, "nf4_dq" if exp.method == "qlora" else "bf16")
        weights = frozen + TRAINABLE_BYTES["weight"] * trainable
    activations = tokens * m.n_layers * m.d_model * activation_k(exp)
    if exp.checkpointing:
        activations += tokens * m.d_model * K_16BIT  # the one layer being recomputed
    terms = {
        "weights": weights,
        "gradients": TRAINABLE_BYTES["gradient"] * trainable,
        "adam": TRAINABLE_BYTES["adam"] * trainable,
        "activations": activations,
        "logits": tokens * m.vocab * (12 if exp.method == "wind_tunnel" else 10),
        "context": CUDA_CONTEXT_BYTES,
    }
    terms["total"] = sum(terms.values())
    return terms


def fits(exp: Experiment, card: Card) -> bool:
    return memory_bytes(exp)["total"] <= card.memory_gb * GB


# --- time ----------------------------------------------------------------------------------------


def flops_per_token(exp: Experiment) -> float:
    base = 4 if exp.method in ("lora16", "qlora") else 6
    return (base + (2 if exp.checkpointing else 0)) * exp.model.n_params


def step_seconds(exp: Experiment, card: Card) -> tuple[float, str]:
    """Seconds per optimizer step on ``card`` and what bounds it (launch, compute or bandwidth)."""
    mem = memory_bytes(exp)
    passes = 3 if exp.checkpointing else 2
    read = passes * mem["weights"] + 2 * (mem["gradients"] + mem["adam"])
    candidates = {
        "launch": 1 / LAUNCH_BOUND_STEPS_PER_S,
        "compute": flops_per_token(exp) * exp.batch * exp.seq / (card.bf16_tflops * 1e12 * MFU[exp.method]),
        "bandwidth": read / (card.bandwidth_gbs * 1e9),
    }
    bound = max(candidates, key=candidates.__getitem__)
    return candidates[bound], bound


def run_seconds(exp: Experiment, card: Card) -> float:
    return exp.steps * step_seconds(exp, card)[0]


def human_time(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 1.5 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def needs(claim_id: str) -> str:
    """The ``Claim(needs=...)`` text of a GPU claim: estimated memory and time on your card; for a
    QLoRA claim also its 16-bit LoRA arm, and whether that arm runs there."""
    exp = CLAIM_EXPERIMENTS[claim_id]
    mem = memory_bytes(exp)["total"] / GB
    bound = step_seconds(exp, YOURS)[1]
    extra = " + loading" if exp.method in ("qlora", "lora16") else ""
    text = f"~{mem:.1f} GB GPU memory, ~{human_time(run_seconds(exp, YOURS))}{extra} on an {YOURS.name} ({bound}-bound"
    arm = BASELINE_ARMS.get(claim_id)
    if arm is None:
        return f"est. {text}; see lab hardware)"
    runs = BF16_LORA_HEADROOM * weight_bytes(arm.model, "bf16") <= YOURS.memory_gb * GB  # the claim's own rule
    verdict = f"~{human_time(run_seconds(arm, YOURS))}" if runs else f"{BF16_LORA_HEADROOM}× bf16 weights > card: skips"
    return f"est. QLoRA {text}); 16-bit LoRA arm ~{memory_bytes(arm)['total'] / GB:.1f} GB ({verdict})"


# --- the report ----------------------------------------------------------------------------------


def _cell(exp: Experiment, card: Card) -> str:
    if not fits(exp, card):
        return "no"
    return f"yes {human_time(run_seconds(exp, card))}"


def _efficiency(exp: Experiment) -> str:
    bounds = {step_seconds(exp, card)[1] for card in CARDS}
    if bounds == {"launch"}:
        return f"launch-bound: {LAUNCH_BOUND_STEPS_PER_S:.0f} steps/s (measured, H200)"
    return f"MFU {MFU[exp.method]:.0%} (assumed)" + (f"; {'/'.join(sorted(bounds))}-bound" if len(bounds) > 1 else "")


def plan_table(plan: tuple[Experiment, ...] = PLANNED) -> str:
    """Per experiment: memory needed, and per card 'yes <time>' or 'no' (does not fit)."""
    from labcore.notebook.log import format_table

    headers = ["experiment", "memory GB", *(f"{c.name}{' (yours)' if c is YOURS else ''}" for c in CARDS), "speed"]
    rows = [[e.name, f"{memory_bytes(e)['total'] / GB:.1f}", *(_cell(e, c) for c in CARDS), _efficiency(e)]
            for e in plan]
    return format_table(headers, rows)


def formula_table(plan: tuple[Experiment, ...] = PLANNED) -> str:
    """The memory formula term by term (GB) and the FLOPs per token, per experiment."""
    from labcore.notebook.log import format_table

    headers = ["experiment", "params", "trainable", "weights", "grads", "Adam", "act. (k)", "logits", "ctx",
               "total", "FLOPs/token"]
    rows = []
    for e in plan:
        mem = {key: f"{value / GB:.2f}" for key, value in memory_bytes(e).items()}
        rows.append([e.name, f"{e.model.n_params / 1e9:.3g}B", f"{e.trainable / e.model.n_params:.2%}",
                     mem["weights"], mem["gradients"], mem["adam"], f"{mem['activations']} ({activation_k(e):.3g})",
                     mem["logits"], mem["context"], mem["total"], f"{flops_per_token(e) / e.model.n_params:.0f}N"])
    return format_table(headers, rows)


def _short(exp: Experiment) -> str:
    return f"{exp.name.split(' (')[0]} at {exp.batch}×{exp.seq}"


def upgrade_lines(plan: tuple[Experiment, ...] = PLANNED) -> list[str]:
    """One line per other card: what it unlocks over yours, and how much faster the rest runs."""
    lines = []
    for card in CARDS[1:]:
        unlocked = [_short(e) for e in plan if fits(e, card) and not fits(e, YOURS)]
        still_out = [_short(e) for e in plan if not fits(e, card)]
        both = [e for e in plan if fits(e, card) and fits(e, YOURS)]
        launch = [e for e in both if step_seconds(e, YOURS)[1] == "launch"]
        ratios = [run_seconds(e, YOURS) / run_seconds(e, card) for e in both if e not in launch]
        span = f"{min(ratios):.1f}" + (f"–{max(ratios):.1f}" if max(ratios) - min(ratios) >= 0.05 else "") if ratios else ""
        speed = f"the rest {span}× faster" if ratios else ""
        if launch:
            speed += f", the {len(launch)} launch-bound wind tunnels no faster"
        lines.append(f"{card.name}: unlocks {', '.join(unlocked) or 'nothing new'}; {speed}"
                     + (f"; still out of reach: {', '.join(still_out)}" if still_out else ""))
    return lines


def claims_table(records: list[dict[str, Any]]) -> str:
    """Per claim (grouped by tier): latest duration (its tests summed) and peak memory (the max)."""
    from labcore.notebook.log import format_table, summarise_claims

    rows = []
    for summary in sorted(summarise_claims(records), key=lambda s: (str(s.metadata.get("tier")), s.paper, s.claim)):
        latest = summary.latest
        peaks = [r["peak_memory_bytes"] for r in latest if isinstance(r.get("peak_memory_bytes"), (int, float))]
        kinds = {str(r.get("peak_memory_kind")) for r in latest if r.get("peak_memory_kind")}
        rows.append([summary.metadata.get("tier", "?"), summary.claim,
                     ", ".join(sorted({str(r.get("device", "?")) for r in latest})),
                     f"{sum(float(r.get('duration_s') or 0) for r in latest):.1f}",
                     f"{max(peaks) / GB:.2f}" if peaks else "-", ", ".join(sorted(kinds)) or "-", summary.verdict])
    if not rows:
        return "(no history yet: run some claims, e.g. lab run)"
    return format_table(["tier", "claim", "device", "duration s", "peak GB", "peak is", "verdict"], rows)


def hardware_report(records: list[dict[str, Any]] | None = None) -> str:
    """The whole ``lab hardware`` text; ``records`` (the history) adds the per-claim section."""
    parts = [f"Memory and time per planned experiment (estimates). 'yes <time>' = fits, projected wall time "
             f"(training only); 'no' = does not fit. Your card: {YOURS.name}.", "", plan_table(), "",
             "Memory formula, GB: weights + gradients + Adam + activations (batch·seq·layers·d_model·k) + "
             "logits + CUDA context; FLOPs per token in units of N = parameters.", "", formula_table(), "",
             f"What an upgrade from the {YOURS.name} unlocks:", *(f"  {line}" for line in upgrade_lines()), "",
             "Cards (bf16 dense TFLOP/s, FP32 accumulate; GB/s; ~ = approximate):",
             *(f"  {'~' if c.approximate else ' '}{c.name}: {c.bf16_tflops:g} TFLOP/s, {c.bandwidth_gbs:g} GB/s — "
               f"{c.source}" for c in CARDS)]
    if records is not None:
        parts += ["", "Claims as last run (history: duration_s summed over a claim's tests, peak_memory_bytes max; "
                  "process_rss_high_water is the process's high-water mark, so it includes earlier tests):", "",
                  claims_table(records)]
    return "\n".join(parts)


# --- lab hardware --------------------------------------------------------------------------------

HARDWARE_EPILOG = """\
examples:
  lab hardware                     the tables, then the claims as last run (from the history)
  lab hardware --no-history        only the estimates (what docs/hardware.md pastes)

Estimates from formulas (labcore/notebook/hardware.py; reasoning in docs/hardware.md). Replace an
assumption by a measurement: GPU claims record peak_memory_bytes and, via lab.throughput(...),
tokens_per_s and flops_per_s."""


def add_hardware_parser(commands: Any, formatter: Any) -> Any:
    """The ``lab hardware`` sub-parser (``cli.py`` sets its handler)."""
    from labcore.files import RESULTS_ENV

    parser = commands.add_parser(
        "hardware", help="GPU memory and time per planned experiment, per card: does an upgrade pay?",
        formatter_class=formatter, epilog=HARDWARE_EPILOG,
        description="Memory needed (weights + gradients + Adam + activations) and projected time per planned "
                    f"experiment on the {YOURS.name} and bigger cards,\nwhat each upgrade unlocks, and each claim's "
                    "latest duration and peak memory from the history.",
    )
    parser.add_argument("--no-history", action="store_true", help="leave out the per-claim rows from the history")
    parser.add_argument("--results", type=Path, metavar="DIR", help=f"results folder (default ${RESULTS_ENV} or results/)")
    return parser


def print_hardware(args: Any) -> int:
    """``lab hardware``: print :func:`hardware_report` (with the history unless ``--no-history``)."""
    from labcore.files import history_path
    from labcore.notebook.history import read_history

    records = None if args.no_history else read_history(history_path()).records
    print(hardware_report(records))
    return 0
