"""What claims measure.

``attention_math`` (Var(q·k), softmax Jacobian, PE rotations), ``posterior`` (calibration against
exact posteriors), ``probes`` (key geometry, PCA, linear probes, logit lens, ablation hooks),
``subspace`` (φ subspace similarity, ΔW vs W), ``amplification`` (the exact random reference for
‖UᵀWV‖ and the layer-pooled ΔW-vs-random test of LoRA Table 7), ``routing`` (the routing law of
attention gradients), ``head_ablation`` (head_mask zeroing, mean ablation, a same-norm random
kick, one head at a time), ``ablation_controls`` (same-size uninformative kicks for block
ablations), ``lr_speedup`` (steps to a loss under an LR schedule),
``pareto`` (the learn–forget frontier), ``spectrum`` (the spectrum of ΔW, rank for a share of energy).
"""
