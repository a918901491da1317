"""A tiny library shipped next to the test entry point with ``dependencies=[...]``."""


def shout(text: str) -> str:
    return text.upper()
