"""Suite-wide settings: Hypothesis profiles sized for the 2-core CI budget."""

import os

from hypothesis import HealthCheck, settings

# "ci" keeps the whole suite inside its time budget; "thorough" is for local fuzzing sessions:
# HYPOTHESIS_PROFILE=thorough python -m pytest
settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
