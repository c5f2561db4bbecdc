"""The transformer you can see into.

``model`` (the glass-box GPT: manual attention, named hook points), ``hooks`` (HookPoint, the
activation cache, ``hooks(...)``), ``hf`` (the same hook names on transformers models),
``state_head`` (a GPT with an S-way state head), ``single_head`` (Paper II's one-head model),
``baselines`` (models that must fail), ``modes`` (eval-mode context, logits of any output).
"""
