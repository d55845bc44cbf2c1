"""The built-in handlers: ``word_filter``, ``echo_bot`` and ``webhook`` (docs/handlers.md)."""
