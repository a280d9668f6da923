"""Stand-in package (see tests/_stubs/torchvision/__init__.py)."""
