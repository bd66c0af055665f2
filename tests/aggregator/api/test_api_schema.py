"""Property-based API test: schemathesis generates requests from the OpenAPI 3.1 document the
code produces and sends them to the real server over TLS with a token holding every read
scope (and without one). No answer may be a 5xx; every answer must match the document:
status code documented, content type, body schema.

One check is left out: ``positive_data_acceptance`` (a schema-valid request must get a 2xx).
A cursor is opaque: any string fits its schema, but only the ones the API gave are accepted
(400 otherwise), and the page bound is the server's setting, not a schema constant."""

from __future__ import annotations

import contextlib
import ssl

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.aggregator.api.support import Populated, RunningApi, make_token

pytestmark = pytest.mark.integration
READ = ("statements:read", "intervals:read", "registry:read", "metrics:read")


@pytest.fixture(scope="module")
def schema(api: RunningApi, populated: Populated) -> schemathesis.schemas.BaseSchema:
    import httpx

    document = httpx.get(
        api.url + "/openapi.json", verify=ssl.create_default_context(cafile=populated.ca), timeout=30
    ).json()
    assert document["openapi"].startswith("3.1")
    loaded = schemathesis.openapi.from_dict(document)
    loaded.config.update(base_url=api.url)
    return loaded


@pytest.mark.parametrize("authorised", [True, False])
def test_generated_requests_get_documented_answers_and_no_5xx(
    schema: schemathesis.schemas.BaseSchema, populated: Populated, authorised: bool
) -> None:
    token = make_token(populated.config, *READ) if authorised else None
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    calls: list[int] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        label = operation.label
        operations += 1

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), **headers}
            try:
                response = case.call_and_validate(
                    verify=str(populated.ca), timeout=60, excluded_checks=[positive_data_acceptance]
                )
                calls.append(response.status_code)
            except Exception as exc:  # schemathesis reports all failed checks in one group
                failures.append(f"{label}: {exc}")  # noqa: B023 - called in this iteration
                raise

        with contextlib.suppress(Exception):  # collected above with the operation named
            check()
    assert operations >= 12
    assert len(calls) >= 5 * operations, f"only {len(calls)} requests were sent"
    if not authorised:
        assert set(calls) <= {200, 401, 422}, sorted(set(calls))  # only /healthz answers without a token
    assert not failures, "\n\n".join(failures[:5])
