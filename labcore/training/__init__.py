"""Training, and keeping what was trained.

``trainer`` (the loop, schedules, callbacks, per-step metrics), ``checkpoint`` (safetensors with
the config inside), ``cache`` (the one model cache), and the shared trained models claims use:
``wind_tunnel`` (the Bayesian bijection transformer) and ``em_vs_sgd`` (Paper II's value-lr run).
"""
