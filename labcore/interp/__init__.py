"""Interpretability instruments on the glass-box hook names (docs/hooks.md, docs/interp.md).

Everything here talks to a model through ``run_with_cache`` and ``hooks`` only (plus the final
norm and unembedding for readouts), so it works on ``labcore.glassbox.model.GPT`` and on
transformers models wrapped in ``labcore.glassbox.hf.HookedHF`` alike. Results are
``readout.Labelled`` tensors: ``.values`` with named ``.axes``. Each module is unit-tested against
a brute-force computation in ``tests/test_interp.py``.

=============  ===================================================================================
readout        shared plumbing: ``Labelled``, hook-name expansion, final norm with frozen scale,
               unembedding, KL
patching       activation patching (clean → corrupted, per layer × position × head) and
               attribution patching (first-order gradient estimate of the same)
attribution    residual decomposition, direct logit attribution per part and per head,
               accumulated residual stream
lenses         logit lens and tuned lens (Belrose et al. 2023), KL to the final distribution
heads          previous-token, duplicate-token, induction and attention-sink scores
probing        linear probes with control tasks and selectivity (Hewitt & Liang 2019)
diffing        attention-pattern JS/KL per head, linear CKA of residuals (Kornblith et al. 2019),
               output KL
tracing        causal tracing (Meng et al. 2022, ROME): noise the subject's embeddings, restore one
               hidden state or MLP output per layer × position, indirect effect on p(answer)
sae            sparse autoencoders (Bricken et al. 2023; Cunningham et al. 2023): train, FVE, L0,
               dead fraction, spliced-in CE and loss recovered, the same-L0 PCA baseline
=============  ===================================================================================

This package is science: it never imports ``labcore.notebook``.
"""
