"""Closer: short, timed nudges by SMS and email that help couples build emotional intimacy."""


def create_app(settings=None):  # type: ignore[no-untyped-def]
    from service.app import create_app as _create_app

    return _create_app(settings)
