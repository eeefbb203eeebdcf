"""Faust apps that tests/processors/test_faust_apps.py runs as ``faust -A apps.<name> worker``.

Each module builds its app from environment variables (see :mod:`apps.common`),
so every test points its worker at a Redis database of its own.
"""
