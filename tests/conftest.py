"""Shared test setup: the repository root on sys.path (pg_ext, pg_mini are imported from the checkout)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
