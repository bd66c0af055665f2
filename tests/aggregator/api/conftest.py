from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.aggregator.api.support import Populated, RunningApi, populate, running_api


@pytest.fixture(scope="package")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Populated:
    return populate(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="package")
def api(populated: Populated) -> Iterator[RunningApi]:
    with running_api(populated.config) as running:
        yield running
