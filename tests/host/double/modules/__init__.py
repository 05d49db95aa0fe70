"""Test double of the A1111 v1.10.1 `modules` package: only what scripts/personalization_guidance.py uses.

Written from the contract in ../contract.py (checked live by tests/webui/test_host_contract.py), not from
the host's code. Each module says what it claims.
"""
