"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis).

Every operation gets schemathesis' coverage cases (boundaries, missing and wrong-typed values)
and a few random positive and negative requests; none may answer 5xx, and every answer must
match what the schema documents (body shape and content type). Bounded in count (a handful of
examples per operation), in time per request and for the whole run; no example database.

The run goes through schemathesis' engine (what its CLI runs) rather than its pytest plugin,
whose lazy fixture loader does not work with pytest 9.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from schemathesis.engine import Status, StopReason, events, from_schema

from clipsearch.server import LOCAL_HOSTS, create_app
from test_server import TOKEN, build_store, make_collection

MAX_EXAMPLES = 15
CHECKS = ("not_a_server_error", "response_schema_conformance", "content_type_conformance")


def fuzz_config(item_ids: list[str]) -> schemathesis.Config:
    """Bounded settings; ``item_ids`` (real items) are drawn for id fields half the time."""
    real_ids = {"dictionary": "items", "probability": 0.5}
    return schemathesis.Config.from_dict(
        {
            "seed": 20240607,
            "dictionaries": {"items": {"values": item_ids}},
            "parameters": {"path.item_id": real_ids, "body.id": real_ids, "body.terms.[*].id": real_ids},
            "request-timeout": 30,
            "workers": 1,
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )


@pytest.fixture(scope="module")
def app(tiny_hf_clip: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("fuzz")
    store = build_store(tiny_hf_clip, folder / "store", make_collection(folder / "collection"))
    # schemathesis' ASGI client sends "Host: testserver"
    return create_app(store, token=TOKEN, allowed_hosts=(*LOCAL_HOSTS, "testserver"))


def test_no_server_errors_and_answers_match_the_schema(app) -> None:
    store = app.state.clipsearch.store
    ids = sorted(store.to_arrow(columns=["id"]).column("id").to_pylist())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=fuzz_config(ids))
    operations = {op.ok().label for op in schema.get_all_operations()}
    assert len(operations) >= 14, operations
    problems: list[str] = []
    tested: dict[str, int] = {}
    checked: set[str] = set()
    finished = None
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.label:
            tested[event.label] = tested.get(event.label, 0) + len(event.recorder.cases)
            for case_id, nodes in event.recorder.checks.items():
                for node in nodes:
                    checked.add(node.name)
                    if node.status == Status.FAILURE:
                        interaction = event.recorder.interactions.get(case_id)
                        request = f"{interaction.request.method} {interaction.request.uri}" if interaction else case_id
                        status = interaction.response.status_code if interaction and interaction.response else "?"
                        title = node.failure_info.failure.title if node.failure_info else node.name
                        problems.append(f"{event.label}: {node.name} ({title}) for {request} -> {status}")
            if event.status == Status.ERROR:
                problems.append(f"{event.label}: error in {event.phase}")
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.label}: {type(event.value).__name__}: {event.value}")
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {type(event.exception).__name__}: {event.exception}")
        elif isinstance(event, events.EngineFinished):
            finished = event
    assert not problems, "\n".join(problems[:20])
    assert finished is not None and finished.stop_reason == StopReason.COMPLETED
    assert set(tested) >= operations, operations - set(tested)
    assert all(n >= 3 for n in tested.values()), tested
    assert checked == set(CHECKS)
