"""Holds ``sitecustomize.py``, which sim puts on the PYTHONPATH of its job processes."""
