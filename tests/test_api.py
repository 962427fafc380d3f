"""The WSGI app in-process over a real store (SQLite and PostgreSQL), and over a real waitress server."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from scheduler import control
from scheduler.clock import FakeClock
from scheduler.cluster.health import Health
from scheduler.jobs.registry import make_spec
from scheduler.operator import cli as commands
from scheduler.operator.http import MAX_BODY, Api
from scheduler.operator.metrics import Metrics
from scheduler.operator.server import HttpServer
from scheduler.operator.web import openapi
from scheduler.store import Claim, InstanceRow, Outcome, Owner, Store

from tests.support.ports import free_port
from tests.support.wsgi import call

TOKEN = "t0ken-for-tests"
OWNER = Owner("inst-a", "host-a", 4242)


def work() -> None:
    """A job function; never called here."""


@pytest.fixture
def world(store: Store, clock: FakeClock) -> Store:
    now = clock.now()
    store.jobs.sync(
        [
            make_spec(work, name="etl.load", interval=timedelta(minutes=10)),
            make_spec(work, name="reports.nightly", cron="30 1 * * *", timezone="Europe/London"),
        ],
        now - timedelta(hours=1),
    )
    slot = store.jobs.get("etl.load").anchor_at
    claimed = store.runs.claim([Claim("etl.load", slot)], OWNER, slot, slot + timedelta(minutes=1))[0]
    store.runs.finish(
        [
            Outcome(
                claimed.run_id,
                claimed.fence,
                "failed",
                finished_at=slot + timedelta(seconds=3),
                started_at=slot + timedelta(seconds=1),
                error_type="ValueError",
                error_message="<img src=x onerror=alert(1)>",
                error_traceback="Traceback ...\nValueError\n",
                log="fetched 3 rows\n",
            )
        ]
    )
    return store


@pytest.fixture
def app(world: Store, clock: FakeClock) -> Api:
    health = Health(clock)
    return Api(world, health, clock, TOKEN, Metrics(world, health, clock, "inst-a"))


def get_json(app: Api, path: str, query: str = "", status: int = 200) -> Any:
    code, headers, body = call(app, "GET", path, query=query)
    assert code == status, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


# -- reading ------------------------------------------------------------------


def test_the_api_and_the_cli_return_the_same_jobs(
    app: Api,
    world: Store,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(commands, "clock", clock)
    assert control.main(["--database-url", world.db.url, "jobs", "--json"]) == 0
    from_cli = json.loads(capsys.readouterr().out)
    from_api = get_json(app, "/api/jobs")
    assert from_api == from_cli and [j["name"] for j in from_api] == ["etl.load", "reports.nightly"]
    assert control.main(["--database-url", world.db.url, "history", "--json", "--limit", "5"]) == 0
    assert get_json(app, "/api/runs", "limit=5") == json.loads(capsys.readouterr().out)


def test_read_routes(app: Api, world: Store) -> None:
    job = get_json(app, "/api/jobs/etl.load")
    assert job["definition"]["interval_seconds"] == 600 and job["recent_runs"][0]["status"] == "failed"
    slots = get_json(app, "/api/jobs/reports.nightly/next", "n=2")["slots"]
    assert [s["local"] for s in slots] == ["2026-03-02T01:30:00+00:00", "2026-03-03T01:30:00+00:00"]
    runs = get_json(app, "/api/runs", "job=etl.load&status=failed&limit=10")
    assert [r["error_type"] for r in runs] == ["ValueError"]
    run = get_json(app, f"/api/runs/{runs[0]['id']}")
    assert run["log"] == "fetched 3 rows\n" and run["duration_seconds"] == 2.0
    assert get_json(app, "/api/instances") == []
    assert get_json(app, "/api/audit") == []
    world.incidents.open_incident(
        "etl.load", "failing", "etl.load <b>failed</b>", {}, world.runs.get(1).finished_at, None
    )
    alerts = get_json(app, "/api/alerts", "all=true&limit=5")
    assert [(a["subject"], a["kind"]) for a in alerts] == [("etl.load", "failing")]
    assert get_json(app, "/api/alerts") == alerts
    page = call(app, "GET", "/")[2].decode()
    assert 'id="alerts"' in page and "etl.load &lt;b&gt;failed&lt;/b&gt;" in page


@pytest.mark.parametrize(
    ("path", "query", "status", "fragment"),
    [
        ("/api/runs", "limit=abc", 400, "'limit' must be a whole number"),
        ("/api/runs", "limit=0", 400, "limit must be 1-1000"),
        ("/api/runs", "status=odd", 400, "status must be one of"),
        ("/api/runs", "job=nope", 404, "no job named 'nope'"),
        ("/api/jobs/etl.load/next", "n=1000", 400, "count must be 1-100"),
        ("/api/jobs/nope", "", 404, "no job named 'nope'"),
        ("/api/runs/abc", "", 400, "run id must be a whole number"),
        ("/api/runs/99999", "", 404, "no run with id 99999"),
        ("/api/nothing", "", 404, "no such path: /api/nothing"),
        ("/api/alerts", "all=banana", 400, "'all' must be true or false, got 'banana'"),
        ("/api/alerts", "all=null", 400, "'all' must be true or false, got 'null'"),
        ("/api/alerts", "all=1", 400, "'all' must be true or false"),
        ("/api/runs", "limit=", 400, "'limit' must be a whole number, got ''"),
        ("/api/jobs/etl.load/next", "n=", 400, "'n' must be a whole number, got ''"),
        ("/api/audit", "limit=", 400, "'limit' must be a whole number"),
        ("/", "state=odd", 400, "state must be one of"),
        ("/", "page=0", 400, "page must be a whole number from 1"),
        ("/static/../../etc/passwd", "", 404, "no such path"),
        ("/static/secret.py", "", 404, "no such file"),
    ],
)
def test_bad_reads_are_json_4xx(app: Api, path: str, query: str, status: int, fragment: str) -> None:
    assert fragment in get_json(app, path, query, status=status)["error"]


def test_a_path_that_is_not_utf8_is_a_documented_400(app: Api) -> None:
    environ_path = "/api/jobs/\xff"  # what a server hands over for GET /api/jobs/%FF
    status, _, body = call_raw(app, "GET", environ_path)
    assert status == 400 and json.loads(body) == {"error": "the path is not valid UTF-8"}
    assert "400" in openapi.document()["paths"]["/api/jobs/{name}"]["get"]["responses"]


def call_raw(app: Any, method: str, path_info: str) -> tuple[int, dict[str, str], bytes]:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path_info, "wsgi.input": io.BytesIO(b"")}
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split()[0]), dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"interval": "5m"}, True),
        ({"cron": "0 6 * * *"}, True),
        ({"cron": "0 6 * * *", "timezone": "Europe/Paris"}, True),
        ({"clear": True}, True),
        ({"clear": True, "cron": ""}, False),
        ({"clear": False}, False),
        ({"interval": "5m", "cron": "0 6 * * *"}, False),
        ({"interval": "5m", "timezone": "UTC"}, False),
        ({"interval": "5m", "clear": False}, False),
        ({}, False),
    ],
)
def test_schedule_changes_take_exactly_the_documented_shapes(
    app: Api, body: dict[str, Any], valid: bool
) -> None:
    schema = openapi.document()["components"]["schemas"]["ScheduleChange"]
    assert "oneOf" in schema
    validator = Draft202012Validator({**schema, "components": openapi.document()["components"]})
    assert validator.is_valid(body) == valid
    status, _, answer = call(app, "PUT", "/api/jobs/etl.load/schedule", json.dumps(body).encode(), TOKEN)
    assert (status == 200) == valid, answer
    if not valid:
        assert status == 400 and json.loads(answer)["error"]


# -- writing ------------------------------------------------------------------


def test_writes_need_the_bearer_token_and_are_audited_with_the_remote_address(app: Api, world: Store) -> None:
    for token in (None, "wrong", TOKEN + "x", ""):
        code, headers, body = call(app, "POST", "/api/jobs/etl.load/trigger", token=token)
        assert code == 401 and headers["WWW-Authenticate"] == "Bearer", token
        assert TOKEN not in body.decode()
    code, _, body = call(app, "POST", "/api/jobs/etl.load/trigger", token=TOKEN)
    assert code == 202
    run = world.runs.get(json.loads(body)["run_id"])
    assert (run.trigger, run.status) == ("manual", "queued")
    code, _, body = call(app, "POST", "/api/jobs/etl.load/pause", token=TOKEN, body=b"{}")
    assert code == 200 and json.loads(body)["paused"] is True
    code, _, body = call(app, "POST", "/api/jobs/etl.load/trigger", token=TOKEN)
    assert code == 409 and json.loads(body) == {
        "error": "job 'etl.load' is paused; resume it before triggering"
    }
    code, _, body = call(app, "POST", "/api/jobs/etl.load/resume", token=TOKEN)
    assert code == 200 and json.loads(body)["paused"] is False
    change = json.dumps({"cron": "0 6 * * *", "timezone": "Europe/Paris"}).encode()
    code, _, body = call(app, "PUT", "/api/jobs/etl.load/schedule", change, token=TOKEN)
    assert code == 200 and json.loads(body)["schedule"] == "cron 0 6 * * * (Europe/Paris)"
    code, _, body = call(app, "PUT", "/api/jobs/etl.load/schedule", b'{"interval": 90}', token=TOKEN)
    assert code == 200 and json.loads(body)["schedule"] == "every 90s"
    code, _, body = call(app, "PUT", "/api/jobs/etl.load/schedule", b'{"clear": true}', token=TOKEN)
    assert code == 200 and json.loads(body)["overridden"] is False
    entries = world.jobs.audit_log("etl.load")
    assert [e.action for e in entries] == ["unset", "set", "set", "resume", "pause", "trigger"]
    assert {e.actor for e in entries} == {"api:10.1.2.3"}


def test_writes_are_refused_when_no_token_is_configured(world: Store, clock: FakeClock) -> None:
    app = Api(world, Health(clock), clock, api_token="")
    code, _, body = call(app, "POST", "/api/jobs/etl.load/trigger", token="anything")
    assert code == 403
    assert json.loads(body)["error"] == (
        "writes are disabled: no API token is configured (set SCHEDULER_API_TOKEN)"
    )
    assert world.runs.history("etl.load", status="queued") == []


WRITES = [
    ("POST", "/api/jobs/etl.load/trigger"),
    ("POST", "/api/jobs/etl.load/pause"),
    ("POST", "/api/jobs/etl.load/resume"),
    ("PUT", "/api/jobs/etl.load/schedule"),
]
GARBAGE = [
    b"\xff\xfe\x00garbage",
    b"{",
    b"not json at all",
    b"[1, 2, 3]",
    b'"a string"',
    b"null",
    b"42",
    b'{"bogus": 1}',
    b'{"interval": -5}',
    b'{"interval": 0}',
    b'{"interval": true}',
    b'{"interval": [1]}',
    b'{"interval": {"s": 1}}',
    b'{"interval": 1e400}',
    b'{"interval": "9999999999999999999999d"}',
    b'{"interval": "0.1"}',
    b'{"interval": "5m", "cron": "* * * * *"}',
    b'{"cron": 5}',
    b'{"cron": "* *"}',
    b'{"cron": "' + b"1" * 300 + b'"}',
    b'{"cron": "0 6 * * *", "timezone": "Nowhere/Special"}',
    b'{"cron": "0 6 * * *", "timezone": 7}',
    b'{"interval": "5m", "timezone": "UTC"}',
    b'{"clear": "yes"}',
    b'{"clear": true, "interval": "5m"}',
    b'{"clear": false}',
    b"{}",
]


def test_garbage_to_every_write_route_is_a_4xx_json_error_and_changes_nothing(app: Api, world: Store) -> None:
    tried = 0
    for method, path in WRITES:
        for payload in GARBAGE:
            if payload == b"{}" and method == "POST":
                continue  # an empty object is a valid body for the actions
            code, headers, body = call(app, method, path, payload, token=TOKEN)
            assert 400 <= code < 500, (path, payload, code, body)
            assert headers["Content-Type"] == "application/json" and "error" in json.loads(body), (
                path,
                payload,
            )
            tried += 1
        code, _, body = call(app, method, path, b"x" * (MAX_BODY + 1), token=TOKEN)
        assert code == 413, body
        code, _, body = call(app, method, path, token=TOKEN, headers={"CONTENT_LENGTH": "-1"})
        assert code == 400, body
        code, headers, _ = call(app, "GET", path)
        assert code == 405 and headers["Allow"] == method
        code, _, _ = call(app, method, path.replace("etl.load", "nope"), token=TOKEN)
        assert code == 404 if method == "POST" else code == 400  # PUT without a body is a bad payload
    assert tried > 90
    assert world.jobs.audit_log() == [] and world.runs.history(status="queued") == []
    row = world.jobs.get("etl.load")
    assert not row.paused and not row.overridden


# -- health, metrics, documents -----------------------------------------------


def test_healthz_is_503_with_the_reason_when_the_database_or_the_loop_is_down(
    world: Store, clock: FakeClock
) -> None:
    health = Health(clock, loop_stall=10.0)
    app = Api(world, health, clock)
    assert get_json(app, "/healthz")["ok"] is True
    health.database(False, "connection refused")
    assert get_json(app, "/healthz", status=503)["reason"] == "database unavailable: connection refused"
    health.database(True)
    clock.advance(11)
    assert get_json(app, "/healthz", status=503)["reason"] == "dispatcher loop stalled for 11s"
    health.loop_alive()
    assert get_json(app, "/healthz")["reason"] == "ok"


def test_an_unreachable_database_gives_503_not_500(clock: FakeClock) -> None:
    port = free_port()  # nothing listens there
    store = Store(f"postgresql://postgres@127.0.0.1:{port}/none")
    try:
        app = Api(store, Health(clock), clock, TOKEN)
        body = get_json(app, "/api/jobs", status=503)
        assert body["error"].startswith("database unavailable")
        code, _, _ = call(app, "POST", "/api/jobs/x/trigger", token=TOKEN)
        assert code == 503
        code, headers, page = call(app, "GET", "/")
        assert code == 503 and headers["Content-Type"].startswith("text/html")
        assert b"database unavailable" in page and b'id="live"' in page
    finally:
        store.dispose()


def test_openapi_document_describes_exactly_the_served_routes(app: Api) -> None:
    doc = get_json(app, "/api/openapi.json")
    assert doc["openapi"] == "3.1.0" and doc == openapi.document()
    described = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    served = {(r.method, r.pattern) for r in app.routes}
    assert described == served
    assert {("GET", "/metrics"), ("GET", "/"), ("GET", "/runs/{run_id}")} <= described
    for method, path in described:
        operation = doc["paths"][path][method.lower()]
        write = any(r.write for r in app.routes if (r.method, r.pattern) == (method, path))
        assert ("security" in operation) == write, path
        assert {"401", "403"} <= set(operation["responses"]) if write else True
    refs = set(_refs(doc))
    assert refs and all(ref.split("/")[-1] in doc["components"]["schemas"] for ref in refs)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_dashboard_escapes_what_it_shows_and_forbids_inline_script(app: Api, world: Store) -> None:
    code, headers, body = call(app, "GET", "/")
    page = body.decode()
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'data-action="trigger" data-job="etl.load"' in page and "<script>" not in page
    assert "http://" not in page and "https://" not in page  # no external assets
    run_id = world.runs.history("etl.load")[0].id
    code, _, body = call(app, "GET", f"/runs/{run_id}")
    assert code == 200 and "fetched 3 rows" in body.decode() and "&lt;img" in body.decode()
    for name, kind in (("dashboard.css", "text/css"), ("dashboard.js", "text/javascript")):
        code, headers, body = call(app, "GET", f"/static/{name}")
        assert code == 200 and headers["Content-Type"].startswith(kind) and b"http" not in body


def test_read_only_dashboard_disables_the_buttons(world: Store, clock: FakeClock) -> None:
    _, _, body = call(Api(world, Health(clock), clock, api_token=""), "GET", "/")
    page = body.decode()
    assert "Read-only" in page and 'data-job="etl.load" disabled>Run now' in page


# -- over a real server -------------------------------------------------------


def fetch(
    url: str, method: str = "GET", body: bytes | None = None, token: str | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_over_waitress_on_a_free_port(app: Api, world: Store) -> None:
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    try:
        status, body = fetch(server.url + "/api/jobs")
        assert status == 200 and [j["name"] for j in json.loads(body)] == ["etl.load", "reports.nightly"]
        status, body = fetch(server.url + "/api/jobs/etl.load/trigger", "POST", b"", TOKEN)
        assert status == 202
        assert world.runs.get(json.loads(body)["run_id"]).status == "queued"
        entry = world.jobs.audit_log("etl.load")[0]
        assert entry.actor == "api:127.0.0.1"
        status, body = fetch(server.url + "/api/jobs/etl.load/schedule", "PUT", b"\x00{{", TOKEN)
        assert status == 400 and "error" in json.loads(body)
        status, body = fetch(server.url + "/metrics")
        assert status == 200 and b"scheduler_jobs{" in body
        assert fetch(server.url + "/healthz")[0] == 200
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        fetch(server.url + "/healthz")


def test_a_taken_port_is_a_one_line_config_error(app: Api) -> None:
    from scheduler.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"SCHEDULER_HTTP_PORT: cannot listen on 127.0.0.1:{port}: "):
            HttpServer(app, "127.0.0.1", port)


def test_every_answer_matches_the_openapi_document(app: Api, world: Store, clock: FakeClock) -> None:
    doc = openapi.document()
    validate_spec(doc)  # a valid OpenAPI 3.1 document
    now = clock.now()
    world.cluster.register(
        InstanceRow(
            "inst-a", "host-a", 1, "1.0.0", now, now, now + timedelta(seconds=10), None, "alive", [], []
        )
    )
    world.incidents.open_incident("etl.load", "failing", "etl.load failed", {}, now, None)
    checked = []

    def check(method: str, pattern: str, path: str, body: bytes = b"", query: str = "") -> None:
        status, _, data = call(app, method, path, body, token=TOKEN, query=query)
        answer = doc["paths"][pattern][method.lower()]["responses"][str(status)]
        schema = answer["content"]["application/json"]["schema"]
        validator = Draft202012Validator(
            {**schema, "components": doc["components"]}, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        validator.validate(json.loads(data))
        checked.append((method, pattern, status))

    check("GET", "/healthz", "/healthz")
    check("GET", "/api/jobs", "/api/jobs")
    check("GET", "/api/jobs/{name}", "/api/jobs/etl.load")
    check("GET", "/api/jobs/{name}", "/api/jobs/nope")
    check("GET", "/api/jobs/{name}/next", "/api/jobs/reports.nightly/next", query="n=3")
    check("POST", "/api/jobs/{name}/trigger", "/api/jobs/etl.load/trigger")
    check("POST", "/api/jobs/{name}/pause", "/api/jobs/etl.load/pause")
    check("POST", "/api/jobs/{name}/trigger", "/api/jobs/etl.load/trigger")
    check("POST", "/api/jobs/{name}/resume", "/api/jobs/etl.load/resume")
    check("PUT", "/api/jobs/{name}/schedule", "/api/jobs/etl.load/schedule", b'{"cron": "0 6 * * *"}')
    check("PUT", "/api/jobs/{name}/schedule", "/api/jobs/etl.load/schedule", b'{"cron": 6}')
    check("GET", "/api/runs", "/api/runs", query="limit=10")
    check("GET", "/api/runs/{run_id}", "/api/runs/1")
    check("GET", "/api/instances", "/api/instances")
    check("GET", "/api/alerts", "/api/alerts", query="all=true")
    check("GET", "/api/audit", "/api/audit")
    assert {status for _, _, status in checked} == {200, 202, 400, 404, 409}


def test_a_daemon_whose_http_port_is_taken_exits_2_before_touching_the_database(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        env.update(
            SCHEDULER_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}",
            SCHEDULER_PIDFILE=str(tmp_path / "pid"),
            SCHEDULER_LOG_DIR=str(tmp_path / "logs"),
            SCHEDULER_HTTP_ENABLED="true",
            SCHEDULER_HTTP_PORT=str(port),
        )
        control_py = Path(__file__).resolve().parents[1] / "code" / "scheduler" / "control.py"
        done = subprocess.run(
            [sys.executable, str(control_py), "run"], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"config: SCHEDULER_HTTP_PORT: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert not (tmp_path / "db.sqlite").exists()
