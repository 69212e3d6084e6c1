"""Reusable test helpers: tiny offline models and tokenizers, hypothesis strategies, contracts."""

try:  # a failed contract shows the values it compared, as a test's own assert does
    import pytest

    pytest.register_assert_rewrite("automr.testing.contracts")
except ImportError:  # the contracts need the dev extra; the rest of this package does not
    pass
