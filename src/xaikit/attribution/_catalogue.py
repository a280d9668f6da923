"""Imports every method module so that each registers itself with ``xk.explain``.

Add a new method's module here.
"""
