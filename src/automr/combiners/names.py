"""The registry combiners' names (:data:`~automr.combiners.tokens.COMBINERS`), apart so that
settings and CLI options can name them without importing torch."""

COMBINER_NAMES = ("prepend-token", "append-token", "concat")
