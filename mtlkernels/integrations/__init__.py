"""Bridges from mtlkernels to other pruning libraries.

Each bridge lives in its own submodule and imports its library only when that submodule is
imported (``import mtlkernels.integrations.torch_pruning`` needs ``torch_pruning``), so importing
this package costs nothing and needs nothing.
"""
