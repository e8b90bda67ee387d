"""Root conftest: settings shared by the tests/ suite and the doctests of the packages."""

collect_ignore_glob = ["*/__main__.py", "notebooks/*", "build/*"]

from tests.conftest import *  # noqa: E402,F401,F403  (offline env, session cache, torchvision fix)
