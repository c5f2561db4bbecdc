"""Root conftest: loads the lab's pytest plugin (markers, the `lab` fixture, history records).

Everything lives in labcore/plugin.py so that it can be read, tested and reused on its own.
"""

pytest_plugins = ("labcore.plugin",)
