"""Suite-wide test setup. Keep this minimal: fixtures live in each folder's conftest.py.

Endpoints of the local servers are in `tests/services.py`; start the servers with
`bash scripts/services.sh up`. Tests that need them are marked `services`.
The repository root is on sys.path (pyproject's `pythonpath`), so `tests.*` imports work.
"""
