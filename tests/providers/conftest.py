from tests.support.sending import fake, prism  # noqa: F401 - fixtures for this directory
