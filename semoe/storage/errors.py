"""Errors of the results store (shared by the store and its row classes)."""


class StoreError(RuntimeError):
    """The results store cannot be opened or written."""


class StoreLockedError(StoreError):
    pass
