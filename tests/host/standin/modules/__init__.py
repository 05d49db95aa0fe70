"""Test stand-in for the AUTOMATIC1111 WebUI (v1.10.1) `modules` package.

Minimal, self-written equivalents of the host modules an extension touches. Names and signatures
follow the real host; behaviour is reduced to what tests need. Put `tests/host/standin` first on
sys.path (see tests/host/conftest.py) so that `import modules.scripts` resolves here.
"""
