"""Test-session settings shared by tests/ops and tests/train."""

import os

from hypothesis import settings

# CI runs derandomized: the same examples every run, so a red CI always means a reproducible
# failure. Locally hypothesis explores new examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
