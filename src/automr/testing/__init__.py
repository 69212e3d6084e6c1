"""Reusable test helpers: tiny offline models and tokenizers, hypothesis strategies, contracts."""

try:  # a failed contract shows the values it compared, as a test's own assert does
    import pytest

    pytest.register_assert_rewrite("automr.testing.contracts")
except ImportError:  # the contracts and strategies need the dev extra; tiny and synthetic do not
    pass
