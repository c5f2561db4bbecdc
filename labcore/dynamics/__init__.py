"""Training-dynamics instruments: what the loss curve, the optimizer and the landscape are doing.

Each instrument is unit-tested against a brute-force reference in ``tests/test_dynamics.py``; the
ideas and equations are in ``docs/concepts/training-dynamics.md``.

* :mod:`labcore.dynamics.optimizer_state`: per-parameter / per-module AdamW (and SGD) state —
  update/weight ratio, ‖m‖, mean √v̂, the effective step η·m̂/(√v̂+ε), bias corrections 1−β^t —
  accumulated on the device, returned as numpy (reference: a hand-written Adam).
* :mod:`labcore.dynamics.sharpness`: top Hessian eigenvalue by power iteration on Hessian-vector
  products, full-batch and mini-batch; the explicit Hessian of tiny models (reference: eigvalsh).
* :mod:`labcore.dynamics.noise_scale`: the gradient noise scale B_simple = tr Σ / |G|², from two
  batch sizes (McCandlish et al. App. A) and from per-example gradients (reference: each other,
  and linear regression where Σ is known).
* :mod:`labcore.dynamics.landscape`: loss along init → final, filter-normalised random directions,
  1-D and 2-D slices (Goodfellow et al. 2015; Li et al. 2018).
* :mod:`labcore.dynamics.lr_sweep`: learning-rate sweeps over the trainer — final loss per η, the
  divergence edge, the U-shape.
* :mod:`labcore.dynamics.toy`: problems with closed-form answers — a quadratic bowl of chosen
  eigenvalues, Gaussian linear regression with known gradient covariance.

This package belongs to the science half: it never imports ``labcore.notebook``.
"""
