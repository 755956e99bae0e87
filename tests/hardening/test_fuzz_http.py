"""Schemathesis over every HTTP route: with a valid token, no request
gets a 5xx, every answer matches the OpenAPI document (status, content type, body schema), and
no rejected request changes the stored state of a sentinel run.

The app runs over ASGI in this process, on the in-memory store. Bounded: `MAX_EXAMPLES` cases
per operation (about 10 s in all on the 2-core development machine).
    python -m pytest tests/hardening/test_fuzz_http.py -q
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from selector_service.http_api import create_app
from selector_service.metrics import Metrics
from selector_service.service import SelectorService
from selector_service.store import MemoryStore
from tests.hardening.conftest import AUTH
from tests.hardening.conftest import settings as make_settings
from tests.selector_service.conftest import batch, report

MAX_EXAMPLES = 40
SENTINEL = "sentinel"

_service = SelectorService(MemoryStore(), Metrics())
app = create_app(_service, make_settings(max_body_mb=1), Metrics())
app.state.service = _service
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


def _make_sentinel() -> None:
    _service.put_run(SENTINEL, feature_dim=4, seed=5)
    first = _service.select(SENTINEL, batch("sentinel-0"))
    _service.select(SENTINEL, batch("sentinel-1", seed=1))
    _service.report_outcomes(SENTINEL, report(first.selection_id, "sentinel-rep"))


def _stored() -> Any:
    """Everything stored for the sentinel run (state, counters, history)."""
    try:
        info = _service.get_run(SENTINEL).model_dump(exclude={"store_epoch"})
    except KeyError:
        return None
    return info, _service.history(SENTINEL, 10_000)


_make_sentinel()


@pytest.fixture
def sentinel_state() -> Any:
    if _stored() is None:
        _make_sentinel()
    return _stored()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_route_answers_by_the_schema_and_rejections_change_nothing(case: Any) -> None:
    if "run_id" in (case.path_parameters or {}) and case.method != "DELETE" and \
            hash(str(case.body)) % 2 == 0:
        case.path_parameters["run_id"] = SENTINEL  # aim half of the bodies at the sentinel
    before = _stored()
    if before is None:
        _make_sentinel()
        before = _stored()
    response = case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500, response.text
    after = _stored()
    if response.status_code >= 400:
        assert after == before, (case.method, case.path, response.status_code)
