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


_SIMULATOR_TEST = "test_cuda_simulator.py::test_cuda_folder_passes_under_the_simulator"


def pytest_collection_finish(session):
    # The CUDA-simulator run is one long single-threaded subprocess: start it now, beside the rest of the suite.
    for item in session.items:
        if item.nodeid.endswith(_SIMULATOR_TEST):
            item.module.start_simulator_run()
            break


def pytest_sessionfinish(session):
    for item in session.items:
        if item.nodeid.endswith(_SIMULATOR_TEST):
            item.module.stop_simulator_run()
            break
