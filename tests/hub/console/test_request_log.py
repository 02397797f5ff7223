"""Request ids and JSON logs: every API and console response carries an id, log lines carry it,
and nothing secret reaches the access log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from iotguard.cli.main import main
from iotguard.hub.request_log import JsonLogFormatter, RequestIdFilter
from tests.hub.console.conftest import ConsoleHub


@pytest.fixture
def json_records() -> list[str]:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep()
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("iotguard.access")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_every_response_carries_a_request_id_and_a_good_caller_id_is_kept(console: ConsoleHub) -> None:
    client = console.hub.client
    first, second = client.get("/health"), client.get("/health")
    assert len(first.headers["x-request-id"]) == 16 and first.headers["x-request-id"] != second.headers["x-request-id"]
    assert client.get("/health", headers={"X-Request-ID": "trace-42.a_b"}).headers["x-request-id"] == "trace-42.a_b"
    forged = client.get("/health", headers={"X-Request-ID": "a\"b\nforged log line"}).headers["x-request-id"]
    assert forged != "a\"b\nforged log line" and "\n" not in forged  # log injection through the header
    assert console.browser().get("/console/login").headers["x-request-id"]


def test_access_log_is_json_with_the_id_and_without_query_or_secrets(console: ConsoleHub,
                                                                     json_records: list[str]) -> None:
    token = console.token("viewer")
    r = console.hub.client.get("/v1/devices", params={"status": "active", "secret": "s3cr3t"},
                               headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-7"})
    assert r.status_code == 200
    records = [json.loads(line) for line in json_records]
    mine = [d for d in records if d.get("request_id") == "req-7"]
    assert mine and mine[0]["http"] == {**mine[0]["http"], "method": "GET", "path": "/v1/devices", "status": 200}
    text = "\n".join(json_records)
    assert "s3cr3t" not in text and token not in text and "status=active" not in text


def test_cli_json_log_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "iotguard.toml"
    (tmp_path / "hub").mkdir()
    conf.write_text(f'[hub]\ndata_dir = "{tmp_path / "hub"}"\n')
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        assert main(["--log-format", "json", "tokens", "--config", str(conf), "ls"]) == 0
        formats = [type(h.formatter).__name__ for h in root.handlers]
        logging.getLogger("iotguard.test").warning("hello %s", "json")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    assert formats == ["JsonLogFormatter"]
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["message"] == "hello json" and line["level"] == "warning" and line["logger"] == "iotguard.test"
