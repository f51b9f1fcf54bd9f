"""The store's one error type."""


class StoreError(ValueError):
    """The store cannot be opened, read or written."""
