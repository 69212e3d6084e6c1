"""End-to-end experiments: evaluating methods side by side on the same samples."""
