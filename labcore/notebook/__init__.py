"""The lab notebook: everything about claims and their records, nothing about models.

``claims`` (Claim / Source records, the paper registry), ``plugin`` (pytest: options, markers,
collection, skips), ``recorder`` (the ``lab`` fixture and the history record it builds),
``history`` (the append-only learning log), ``log`` and ``report`` (reading it), ``calibrate``
(seed sweeps), ``figures`` (headless matplotlib), ``cli`` (the ``lab`` command).

This package never imports torch (tests/test_architecture.py proves it), so the ``lab`` command
and pytest's collection start fast and a notebook edit never retrains a cached model.
"""
