"""GPU tier: QLoRA of a local 7B-class checkpoint through unsloth — peak memory, tokens/s, loss curve.

Lab notebook. The same measurement as claims/qlora/test_full_local_qlora.py (peft + bitsandbytes),
through unsloth's ``FastLanguageModel`` (its 4-bit loader, LoRA with its fused kernels and
"unsloth" gradient checkpointing). unsloth advertises lower memory and higher throughput than
stock peft on a GPU; on a CPU it falls back to stock transformers + peft, which is why this
comparison is GPU-only. Put the two records side by side (``lab report``) to see what unsloth
buys on your GPU.

Needs: a CUDA GPU, ``LAB_LOCAL_CHECKPOINT`` (a local transformers folder of a Llama-family 7B
model) and unsloth (``bash scripts/setup-unsloth.sh``; on a GPU machine that script installs the
GPU build of torch only if you drop its ``torch==2.13.0`` CPU pin — see docs/papers/real-model.md).
Run: ``LAB_LOCAL_CHECKPOINT=/models/llama-2-7b-hf .venv-unsloth/bin/pytest claims/lora/test_full_unsloth.py``.
Not yet run on a GPU: no measured numbers here yet.
"""

import math

import pytest

from labcore.notebook.claims import Claim, Source
from labcore.notebook.hardware import needs

CLAIM = Claim(
    id="qlora_full_unsloth",
    paper="qlora",
    statement=(
        "“QLoRA reduces the average memory requirements of finetuning a 65B parameter model from "
        ">780GB of GPU memory to <48GB without degrading the runtime or predictive performance "
        "compared to a 16-bit fully finetuned baseline.” (here through unsloth's implementation)"
    ),
    source=Source(title="QLoRA: Efficient Finetuning of Quantized LLMs", arxiv="2305.14314", version="v1",
                  where="§1 Introduction"),
    paper_value="65B: > 780 GB (16-bit full finetuning) → < 48 GB (QLoRA)",
    prediction=(
        "Through unsloth, a 7B-class model QLoRA-fine-tunes (batch 4 × 256) with peak GPU memory "
        "below its own bf16 weight size, and the loss falls over 50 steps."
    ),
    metric="torch.cuda.max_memory_allocated over loading + 50 steps; tokens/s; mean loss of steps 1–5 vs 46–50",
    tolerance="peak ≤ 0.6 × (2 bytes × n_params); loss(46–50) ≤ loss(1–5) − 0.1 nats",
    tolerance_why=(
        "Same budget as qlora_full_local_checkpoint (NF4+DQ ≈ 0.52 bytes/param + 16-bit embeddings + "
        "checkpointed activations ≈ 0.35 × bf16 for a 7B Llama); 0.1 nats is a loose floor until a "
        "GPU run calibrates it."
    ),
    tier="full",
    tags=("gpu",),
    needs=needs("qlora_full_unsloth"),  # estimate from the formulas in labcore/notebook/hardware.py
)

STEPS, BATCH, SEQ, LR, RANK, ALPHA = 50, 4, 256, 2e-4, 16, 32


@pytest.fixture(scope="module")
def backend():
    from labcore.pretrained.smollm2 import MissingModelError, local_checkpoint_path
    from labcore.pretrained.unsloth_backend import unsloth_status

    ok, reason = unsloth_status()
    if not ok:
        pytest.skip(reason)
    try:
        path = local_checkpoint_path()
    except MissingModelError as error:
        pytest.skip(str(error))
    import labcore.pretrained.unsloth_backend as module

    return module, path


def test_unsloth_qlora_7b_memory_and_loss(lab, backend):
    import unsloth

    from labcore.pretrained.gpu_finetune import load_then_finetune, plot_loss

    unsloth_backend, checkpoint = backend
    run, loading = load_then_finetune(
        lambda: unsloth_backend.load_model(checkpoint, load_in_4bit=True, max_seq_length=SEQ),
        lambda model: unsloth_backend.add_lora(model, r=RANK, alpha=ALPHA, seed=lab.seed,
                                               use_gradient_checkpointing="unsloth"),
        steps=STEPS, batch=BATCH, seq=SEQ, lr=LR, seed=lab.seed,
    )
    lab.record(checkpoint=str(checkpoint), unsloth_version=unsloth.__version__, **loading, **run.as_record())
    lab.savefig(plot_loss(run, f"unsloth QLoRA {checkpoint.name}"), "unsloth_local_loss")
    first, last, peak, bf16_bytes = run.loss_first, run.loss_last, run.peak_bytes, run.bf16_bytes
    assert math.isfinite(last)
    assert peak <= 0.6 * bf16_bytes, f"peak {peak / 1e9:.2f} GB is not ≤ 0.6 × bf16 weights {bf16_bytes / 1e9:.2f} GB"
    assert last <= first - 0.1, f"loss went {first:.3f} → {last:.3f} over {STEPS} steps"
