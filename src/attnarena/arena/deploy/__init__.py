"""The deployment workflows over subjects (``attnarena.subject``): one compress driver and
one linearize driver, each measuring and storing its rows, and compressed models on disk."""
