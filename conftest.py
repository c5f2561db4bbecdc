"""Root conftest: loads the lab's pytest plugin (markers, the `lab` fixture, history records).

Everything lives in labcore/notebook/plugin.py (and recorder.py) so that it can be read, tested
and reused on its own.
"""

pytest_plugins = ("labcore.notebook.plugin",)
