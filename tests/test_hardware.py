"""lab hardware: the memory formula against measured footprints, the table, needs= in skip messages,
and the recorder's peak memory and throughput fields."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from labcore.notebook import hardware as hw
from labcore.notebook.cli import main
from labcore.notebook.history import read_history
from labcore.notebook.plugin import GPU_SKIP_REASON, gpu_skip_reason
from labcore.notebook.recorder import LabRecorder

MB = 1e6

# --- the memory formula against measured numbers ---------------------------------------------------


def test_weight_formula_matches_the_measured_smollm2_footprint() -> None:
    """qlora_smollm2_footprint measured (model_footprint_bytes, exact bytes): fp32 538.06 MB,
    NF4+DQ 168.39 MB with the rest in fp32, 111.69 MB with it in bf16 (docs/performance.md).
    Tolerance 0.1 %: the formula counts parameters, not the rotary inv_freq buffer (32 floats)."""
    model = hw.SMOLLM2_135M
    assert model.n_params == 134_515_008  # SmolLM2-135M's parameter count (tied embedding once)
    measured = {("fp32", "fp32"): 538.06, ("nf4_dq", "fp32"): 168.39, ("nf4_dq", "bf16"): 111.69}
    for (storage, rest), mb in measured.items():
        predicted = hw.weight_bytes(model, storage, rest=rest) / MB
        assert abs(predicted / mb - 1) <= 1e-3, f"{storage} (rest {rest}): formula {predicted:.2f} MB vs {mb} MB"
    assert hw.weight_bytes(model, "fp32") / hw.weight_bytes(model, "nf4_dq", "fp32") > 3


def test_weight_formula_matches_a_tiny_llama_remeasured() -> None:
    """The same check re-measured here: a 2-layer Llama built from the ModelShape, fp32 and NF4+DQ
    (bitsandbytes on the CPU), within 0.5 % (the formula leaves out buffers such as rotary inv_freq)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    transformers = pytest.importorskip("transformers")
    from labcore.finetuning.quantized import model_footprint_bytes, quantize_model_4bit

    shape = hw.ModelShape("tiny-llama", 2, 256, 4, 2, 512, 1000, tied=True)
    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
                                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == shape.n_params
    fp32 = model_footprint_bytes(model)
    assert abs(fp32 / hw.weight_bytes(shape, "fp32") - 1) <= 5e-3
    quantize_model_4bit(model, "nf4", double_quant=True)
    nf4 = model_footprint_bytes(model)
    predicted = hw.weight_bytes(shape, "nf4_dq", rest="fp32")
    assert abs(nf4 / predicted - 1) <= 5e-3, f"NF4+DQ measured {nf4} bytes vs formula {predicted:.0f}"


def test_model_shapes_give_the_published_parameter_counts() -> None:
    published = {hw.LLAMA_32_1B: 1.24e9, hw.LLAMA_32_3B: 3.21e9, hw.LLAMA_2_7B: 6.74e9, hw.QWEN_25_14B: 14.7e9,
                 hw.BIJECTION_V20: 2.7e6, hw.HMM_PAPER: 7.15e6}  # model cards; the full claims' docstrings
    for shape, count in published.items():
        assert abs(shape.n_params / count - 1) <= 0.02, f"{shape.name}: {shape.n_params:,} vs {count:,.0f}"


def test_memory_terms_order_and_checkpointing() -> None:
    by_method = {m: hw.memory_bytes(hw.Experiment("x", hw.LLAMA_2_7B, m, 4, 512, 1))["total"]
                 for m in ("qlora", "lora16", "full")}
    assert by_method["qlora"] < by_method["lora16"] < by_method["full"]
    full = hw.memory_bytes(hw.Experiment("x", hw.LLAMA_2_7B, "full", 1, 1, 1))
    assert full["weights"] + full["gradients"] + full["adam"] == 16 * hw.LLAMA_2_7B.n_params  # fp32 AdamW
    plain, ckpt = (hw.memory_bytes(hw.Experiment("x", hw.LLAMA_2_7B, "qlora", 4, 512, 1, checkpointing=c))
                   for c in (False, True))
    assert ckpt["activations"] < plain["activations"] / 5
    assert 0.004 < hw.LLAMA_2_7B.lora_params(16) / hw.LLAMA_2_7B.n_params < 0.007  # r16 all-linear ≈ 0.6 %


# --- time ------------------------------------------------------------------------------------------


def test_wind_tunnels_are_launch_bound_and_llms_scale_with_the_card() -> None:
    bijection = hw.CLAIM_EXPERIMENTS["bayes_full_bijection"]
    times = {card.name: hw.run_seconds(bijection, card) for card in hw.CARDS}
    assert len(set(times.values())) == 1 and math.isclose(times[hw.YOURS.name], 20_000 / 40)
    # 6 N · tokens at the measured 40 steps/s is ~6 TFLOP/s, as measured on the H200
    assert 4e12 < hw.flops_per_token(bijection) * 256 * 37 * 40 < 8e12
    qlora7 = next(e for e in hw.PLANNED if e.method == "qlora" and e.model is hw.LLAMA_2_7B)
    ratio = hw.run_seconds(qlora7, hw.YOURS) / hw.run_seconds(qlora7, hw.CARDS[2])  # vs the RTX 4090
    assert math.isclose(ratio, hw.CARDS[2].bf16_tflops / hw.YOURS.bf16_tflops)  # compute-bound


# --- the table and the command ---------------------------------------------------------------------


def test_table_has_your_card_every_experiment_and_the_upgrade_lines() -> None:
    text = hw.hardware_report()
    assert "RTX 5060 Ti 16GB (yours)" in text and "RTX 4090 24GB" in text and "H100 80GB" in text
    for exp in hw.PLANNED:
        assert exp.name in text
    assert len(hw.upgrade_lines()) == len(hw.CARDS) - 1
    assert "LoRA bf16 7B" in hw.upgrade_lines()[1]  # 24 GB unlocks 16-bit LoRA of a 7B model
    assert "Claims as last run" not in text


def test_lab_hardware_prints_the_table_and_the_claims_from_history(
        isolated_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labcore.notebook.history import append_record

    append_record(isolated_results / "history.jsonl", {
        "schema": 2, "claim": "bayes_full_hmm", "paper": "bayes", "tier": "full", "test": "t::a",
        "outcome": "passed", "device": "cuda", "duration_s": 250.0, "peak_memory_bytes": 2.1e9,
        "peak_memory_kind": "cuda_max_allocated", "time": "2026-01-01T00:00:00+00:00", "measured": {}})
    assert main(["hardware"]) == 0
    out = capsys.readouterr().out
    assert "RTX 5060 Ti 16GB (yours)" in out and "bayes_full_hmm" in out and "2.10" in out and "250.0" in out
    assert main(["hardware", "--no-history"]) == 0
    assert "Claims as last run" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["hardware", "--help"])
    assert "examples:" in capsys.readouterr().out


# --- needs= in the skip message, and the recorder's new fields ---------------------------------------


def test_needs_text_for_every_gpu_claim_is_short_and_says_memory_and_time() -> None:
    for claim_id in hw.CLAIM_EXPERIMENTS:
        text = hw.needs(claim_id)
        assert "GB" in text and "RTX 5060 Ti" in text and len(GPU_SKIP_REASON + text) < 250


def test_needs_of_a_qlora_claim_covers_its_16_bit_arm_by_the_claims_own_rule() -> None:
    from labcore.pretrained import gpu_finetune

    assert hw.BF16_LORA_HEADROOM == gpu_finetune.BF16_LORA_HEADROOM
    text = hw.needs("qlora_full_local_checkpoint")  # Llama-2-7B: bf16 weights 13.5 GB × 1.25 > 16 GB
    assert "QLoRA" in text and "16-bit LoRA arm" in text and "skips" in text
    assert "16-bit" not in hw.needs("bayes_full_bijection")


def test_gpu_skip_message_carries_the_claims_needs_and_records_peak_memory(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    import labcore.notebook.plugin as plugin

    monkeypatch.setattr(plugin, "_cuda_available", lambda: False)
    results = pytester.path / "results"
    monkeypatch.setenv("LAB_RESULTS_DIR", str(results))
    path = pytester.path / "claims" / "attention" / "test_demo_gpu.py"
    path.parent.mkdir(parents=True)
    path.write_text(textwrap.dedent("""\
        from labcore.notebook.claims import Claim, Source
        CLAIM = Claim(
            id="demo_gpu", paper="attention", statement="s",
            source=Source(title="Attention Is All You Need", arxiv="1706.03762", version="v7", where="§3"),
            paper_value="v", prediction="p", metric="m", tolerance="t", tolerance_why="w", tier="full",
            tags=("gpu",), needs="~6 GB, ~3 min on an RTX 5060 Ti 16GB",
        )
        def test_on_gpu(lab):
            pass
    """))
    result = pytester.runpytest("-p", "labcore.notebook.plugin", "-p", "no:randomly", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*it needs ~6 GB, ~3 min on an RTX 5060 Ti 16GB*"])
    (record,) = read_history(results / "history.jsonl").records
    assert record["message"] == f"{GPU_SKIP_REASON}; it needs ~6 GB, ~3 min on an RTX 5060 Ti 16GB"
    assert record["needs"] == "~6 GB, ~3 min on an RTX 5060 Ti 16GB"
    # CPU: the process's RSS high-water mark (this pytest process: well above 10 MB)
    assert record["peak_memory_kind"] == "process_rss_high_water" and record["peak_memory_bytes"] > 10 * MB


def test_gpu_skip_reason_without_needs_is_unchanged() -> None:
    assert gpu_skip_reason(None) == GPU_SKIP_REASON


def test_throughput_records_tokens_and_flops_per_second(tmp_path: Path) -> None:
    lab = LabRecorder(None, 0, tmp_path, tmp_path / "test_x.py")
    assert lab.throughput(tokens=1000, seconds=2.0) == {"tokens_per_s": 500.0}
    lab.throughput(tokens=1000, seconds=2.0, flops=6e9)
    assert lab.measured == {"tokens_per_s": 500.0, "flops": 6e9, "flops_per_s": 3e9}
    for bad in ({"tokens": 1, "seconds": 0.0}, {"tokens": -1, "seconds": 1.0}, {"tokens": 1, "seconds": 1.0, "flops": math.nan}):
        with pytest.raises(ValueError, match="lab.throughput"):
            lab.throughput(**bad)


def test_on_a_gpu_throughput_also_records_mfu_against_the_cards_peak(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import labcore.notebook.recorder as recorder

    monkeypatch.setattr(recorder, "_gpu_name", lambda: "NVIDIA H200")
    lab = LabRecorder(None, 0, tmp_path, tmp_path / "test_x.py")
    lab.throughput(tokens=1000, seconds=1.0, flops=98.9e12, precision="bf16")
    assert lab.measured["mfu"] == pytest.approx(0.1) and lab.measured["gpu"] == "NVIDIA H200"
    assert hw.peak_flops("NVIDIA GeForce RTX 5060 Ti", "tf32") == 24e12
    assert math.isnan(hw.peak_flops("Some Future GPU"))


def test_train_flops_per_step_is_6_n_tokens_plus_attention() -> None:
    from labcore import GPT, GPTConfig
    from labcore.training.flops import train_flops_per_step, weight_params

    model = GPT(GPTConfig(vocab_size=10, n_ctx=8, d_model=16, n_layers=2, n_heads=2, positional="learned"))
    n = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2) - 8 * 16  # minus W_pos
    assert weight_params(model) == n
    assert train_flops_per_step(model, 4, 8) == 6 * n * 32 + 6 * 2 * 64 * 16 * 4
