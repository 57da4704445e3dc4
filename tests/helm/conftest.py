"""Fixtures of the Helm chart tests (helm binary, renderer); helpers live in helm_support."""

from helm_support import helm_bin, renderer  # noqa: F401 - pytest fixtures
