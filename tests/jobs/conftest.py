from tests.support.sending import fake, prism, scratch, use_providers, use_settings  # noqa: F401 - fixtures
