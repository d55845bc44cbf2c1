"""Chime: a real-time chat server built as a supervised actor system."""

__version__ = "0.1.0"
