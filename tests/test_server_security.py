"""What the server refuses: paths from requests, oversized bodies, huge k, bombs, foreign hosts,
and listening beyond this machine without a token."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote, unquote

import anyio
import pytest
import typer
from typer.testing import CliRunner

from clipsearch.server import create_app
from clipsearch.server.app import ID_PATTERN
from images_helpers import HOSTILE_IMAGES
from test_server import TOKEN, build_store, client_for, item_by_name, make_collection, running_server

BOMB = HOSTILE_IMAGES / "decompression_bomb.gif"
CAP = 1 << 20  # the body cap of the apps in this file: 1 MiB
CHUNK = 64 * 1024
AUTH = (b"authorization", f"Bearer {TOKEN}".encode())


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_collection(tmp_path_factory.mktemp("collection"))


@pytest.fixture(scope="module")
def store(tiny_hf_clip: Path, collection: Path, tmp_path_factory: pytest.TempPathFactory):
    return build_store(tiny_hf_clip, tmp_path_factory.mktemp("stores") / "sec", collection)


@pytest.fixture(scope="module")
def app(store):
    return create_app(store, token=TOKEN, max_body=CAP)


@pytest.fixture(scope="module")
def client(app):
    return client_for(app)


def raw_request(app, method: str, raw_path: str, *, chunks=(), headers=()) -> tuple[int, dict[str, str], bytes, int]:
    """Call the ASGI app with the path exactly as it would arrive on the wire (no client-side
    normalisation), feeding the body in ``chunks``; returns status, headers, body and how many
    body bytes the app pulled."""
    pulled = 0
    messages: list[dict] = []
    source = iter(chunks)

    async def receive() -> dict:
        nonlocal pulled
        try:
            chunk = next(source)
        except StopIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        messages.append(message)

    path, _, query = raw_path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [*([] if any(k == b"host" for k, _ in headers) else [(b"host", b"127.0.0.1")]), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    anyio.run(app, scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    heads = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], heads, body, pulled


def assert_json_error(status: int, headers: dict[str, str], body: bytes, allowed: set[int]) -> dict:
    assert status in allowed, (status, body[:200])
    assert headers["content-type"] == "application/json"
    parsed = json.loads(body)
    assert isinstance(parsed["detail"], str) and parsed["detail"]
    assert "Traceback" not in parsed["detail"]
    return parsed


# -- paths from requests ----------------------------------------------------------------------------

TRAVERSALS = [
    "../../../../etc/passwd",
    "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",
    "..%5c..%5c..%5cwindows%5cwin.ini",
    "%2Fetc%2Fpasswd",
    "....//....//etc/passwd",
    "0123456789abcdef%2F..%2F..%2Fetc%2Fpasswd",
    "0123456789abcdef/../../../etc/passwd",
    "0123456789abcdef%00",
    "0123456789abcdef%00.jpg",
    "0123456789ABCDEF",
    "0123456789abcdef0",
    "0123456789abcde",
    "%EF%BC%90123456789abcdef",
    "~root",
    "file:%2F%2F%2Fetc%2Fpasswd",
]
ITEM_ROUTES = [
    "/api/items/{}",
    "/api/items/{}/thumbnail",
    "/api/items/{}/image",
    "/api/items/{}/similar",
    "/api/items/{}/localize?prompt=x",
]


def test_every_path_parameter_is_a_hex_item_id(client) -> None:
    schema = client.get("/openapi.json").json()
    seen = 0
    for path, ops in schema["paths"].items():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    seen += 1
                    assert param["name"] == "item_id", path
                    assert param["schema"]["pattern"] == ID_PATTERN, path
    assert seen == 5


def test_path_traversal_in_every_item_route(app, collection: Path) -> None:
    real_file = quote(str(collection / "hopper.jpg"), safe="")
    for route in ITEM_ROUTES:
        for attack in [*TRAVERSALS, real_file]:
            raw = route.format(attack)
            status, headers, body, _ = raw_request(app, "GET", raw)
            assert_json_error(status, headers, body, {404, 422})
            assert b"root:" not in body and b"\xff\xd8\xff" not in body, raw


def test_path_traversal_in_static_files(app) -> None:
    for attack in [
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/static/....//....//etc/passwd",
        "/static/%2Fetc%2Fpasswd",
        "/static/..%5c..%5capp.py",
        "/static/../app.py",
    ]:
        status, headers, body, _ = raw_request(app, "GET", attack)
        assert status in (400, 404), (attack, status)
        assert b"root:" not in body and b"create_app" not in body, attack


def test_a_path_in_a_query_is_only_ever_text(client, store, collection: Path) -> None:
    from clipsearch.search import Query, Term

    path = str(collection / "hopper.jpg")
    hits = client.get("/api/search", params={"q": path, "k": 3}).json()
    expected = store.search(Query((Term("text", path),)), k=3)
    assert [h["id"] for h in hits] == [h.id for h in expected]
    hopper = item_by_name(store, "hopper.jpg")
    image_hits = store.search(Path(path), k=1)
    assert image_hits[0].id == hopper.id and image_hits[0].score > 0.999  # what opening the file would give
    assert not (hits[0]["id"] == hopper.id and hits[0]["score"] > 0.999)


def test_a_file_swapped_for_a_symlink_is_not_served(tiny_hf_clip: Path, tmp_path: Path) -> None:
    folder = make_collection(tmp_path / "c")
    store = build_store(tiny_hf_clip, tmp_path / "s", folder)
    client = client_for(create_app(store))
    hopper = item_by_name(store, "hopper.jpg")
    os.unlink(hopper.path)
    os.symlink("/etc/passwd", hopper.path)
    for what in ("image", "thumbnail"):
        response = client.get(f"/api/items/{hopper.id}/{what}")
        assert response.status_code == 404
        assert b"root:" not in response.content


def test_upload_names_never_become_paths(tiny_hf_clip: Path, tmp_path: Path, collection: Path) -> None:
    store = build_store(tiny_hf_clip, tmp_path / "s", collection)
    client = client_for(create_app(store, token=TOKEN))
    data = (HOSTILE_IMAGES / "hopper.png").read_bytes()
    response = client.post(
        "/api/items",
        files={"files": ("../../../../tmp/evil.php", data, "image/png")},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200, response.text
    (added,) = response.json()["added"]
    assert Path(added["path"]).parent == store.root / "uploads"
    assert re.fullmatch(r"[0-9a-f]{16}\.png", Path(added["path"]).name)
    assert not Path("/tmp/evil.php").exists()


# -- bodies over the cap ------------------------------------------------------------------------------

BODY_ROUTES = [
    ("/api/search", b"multipart/form-data; boundary=xyz", ()),
    ("/api/search", b"application/json", ()),
    ("/api/items", b"multipart/form-data; boundary=xyz", (AUTH,)),
    ("/api/classify", b"multipart/form-data; boundary=xyz", ()),
    ("/api/localize", b"multipart/form-data; boundary=xyz", ()),
    ("/api/ask", b"application/json", ()),
]


def _endless(total: int):
    head = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    yield head
    sent = len(head)
    while sent < total:
        yield b"\0" * CHUNK
        sent += CHUNK


def test_a_declared_length_over_the_cap_is_refused_unread(app) -> None:
    for route, ctype, extra in BODY_ROUTES:
        headers = [(b"content-type", ctype), (b"content-length", str(50 * CAP).encode()), *extra]
        status, heads, body, pulled = raw_request(app, "POST", route, chunks=_endless(50 * CAP), headers=headers)
        parsed = assert_json_error(status, heads, body, {413})
        assert parsed["detail"] == "request body too large: the limit is 1 MiB"
        assert pulled == 0, route


def test_a_streamed_body_without_length_is_cut_off_at_the_cap(app) -> None:
    for route, ctype, extra in BODY_ROUTES:
        headers = [(b"content-type", ctype), *extra]
        status, heads, body, pulled = raw_request(app, "POST", route, chunks=_endless(16 * CAP), headers=headers)
        parsed = assert_json_error(status, heads, body, {413})
        assert parsed["detail"] == "request body too large: the limit is 1 MiB"
        assert CAP < pulled <= CAP + CHUNK, (route, pulled)


def test_a_lying_content_length_does_not_lift_the_cap(app) -> None:
    for route, ctype, extra in BODY_ROUTES:
        headers = [(b"content-type", ctype), (b"content-length", b"100"), *extra]
        status, heads, body, pulled = raw_request(app, "POST", route, chunks=_endless(16 * CAP), headers=headers)
        assert_json_error(status, heads, body, {413})
        assert pulled <= CAP + CHUNK, route


def test_a_chunked_upload_to_a_real_server_is_answered_before_it_ends(app) -> None:
    total = 64 * CAP
    with running_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            head = next(_endless(0))
            sock.sendall(b"%x\r\n" % len(head) + head + b"\r\n")
            sock.setblocking(False)
            sent, reply = 0, b""
            chunk = b"%x\r\n" % CHUNK + b"\0" * CHUNK + b"\r\n"
            deadline = time.monotonic() + 30
            while sent < total and b"\r\n\r\n" not in reply and time.monotonic() < deadline:
                try:
                    sent += sock.send(chunk)
                except BlockingIOError:
                    time.sleep(0.005)
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    reply += sock.recv(65536)
                except BlockingIOError:
                    pass
            sock.setblocking(True)
            try:
                while b"}" not in reply:
                    data = sock.recv(65536)
                    if not data:
                        break
                    reply += data
            except (ConnectionResetError, TimeoutError):
                pass
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert reply.endswith(b'{"detail":"request body too large: the limit is 1 MiB"}')
    assert sent < total / 2  # answered long before the client finished sending


# -- k, pixels, bombs -------------------------------------------------------------------------------


def test_huge_or_bad_k_is_a_422(client, store) -> None:
    hopper = item_by_name(store, "hopper.jpg")
    for k in ("1001", "1000000000000", "-1", "0", "1e3", "9" * 400, "ten"):
        for path in ("/api/search?q=dog&k=" + k, f"/api/items/{hopper.id}/similar?k=" + k):
            response = client.get(path)
            assert response.status_code == 422, path
            assert response.json()["detail"].startswith("k: "), path
    for k in (1001, 10**30, 0, 2.5, True):
        response = client.post("/api/search", json={"q": "dog", "k": k})
        assert response.status_code == 422, k
        assert response.json()["detail"].startswith("k: ")
    response = client.post("/api/search", data={"q": "dog", "k": "1001"})
    assert response.status_code == 422 and response.json()["detail"] == "k: Input should be less than or equal to 1000"
    assert len(client.get("/api/search", params={"q": "dog", "k": 1000}).json()) == 12


def test_a_decompression_bomb_is_refused_everywhere(client, store) -> None:
    bomb = BOMB.read_bytes()
    assert len(bomb) < 100  # 44 bytes that claim 4.4 gigapixels
    before = len(store)
    upload = {"image": ("bomb.gif", bomb, "image/gif")}
    expected = "image: 4,364,696,535 pixels, over the limit of 89,478,485 pixels (raise CLIPSEARCH_MAX_PIXELS to allow it)"
    for path, data in (("/api/search", {"k": "3"}), ("/api/classify", {"labels": "a, b"}), ("/api/localize", {"prompt": "x"})):
        response = client.post(path, files=upload, data=data)
        assert response.status_code == 422, path
        assert response.json()["detail"] == expected, path
    response = client.post("/api/items", files={"files": ("bomb.gif", bomb, "image/gif")}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "no image could be added (bomb.gif: 4,364,696,535 pixels, over the limit of 89,478,485 pixels "
        "(raise CLIPSEARCH_MAX_PIXELS to allow it))"
    )
    assert len(store) == before


def test_the_pixel_cap_is_the_servers(store) -> None:
    client = client_for(create_app(store, max_pixels=10_000))
    data = (HOSTILE_IMAGES / "hopper.png").read_bytes()  # 128 x 128
    response = client.post("/api/search", files={"image": ("h.png", data, "image/png")})
    assert response.status_code == 422
    assert response.json()["detail"] == "image: 128x128 is 16,384 pixels, over the limit of 10,000 pixels (raise CLIPSEARCH_MAX_PIXELS to allow it)"


# -- hosts, headers, binding ---------------------------------------------------------------------------


def test_foreign_host_headers_are_refused(app) -> None:
    for host in (b"evil.example", b"evil.example:8000", b"127.0.0.1.evil.example", b""):
        status, heads, body, _ = raw_request(app, "GET", "/api/stats", headers=[(b"host", host)])
        parsed = assert_json_error(status, heads, body, {400})
        assert parsed["detail"].startswith("host ")
    for host in (b"127.0.0.1:8000", b"localhost:8000", b"[::1]:8000", b"LOCALHOST"):
        status, _, _, _ = raw_request(app, "GET", "/health", headers=[(b"host", host)])
        assert status == 200, host


def test_images_are_sent_with_nosniff(client, store) -> None:
    hopper = item_by_name(store, "hopper.jpg")
    response = client.get(f"/api/items/{hopper.id}/image")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"] == "inline"
    assert response.headers["content-security-policy"].startswith("default-src 'self'")


@pytest.fixture
def cli() -> typer.Typer:
    from clipsearch.cli.serve import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def noop() -> None:  # a second command, so that `serve` stays a subcommand
        pass

    return app


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_listening_beyond_this_machine_needs_a_token(cli, host: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CLIPSEARCH_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--host", host, "--store", str(tmp_path / "none")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert f"refusing to listen on {host} without a token" in lines[0]
    assert "--token" in lines[0]


def test_loopback_needs_no_token_and_others_accept_one() -> None:
    from clipsearch.server import check_bind

    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        check_bind(host, None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(ValueError, match=re.escape("--token is empty; give a secret string (or unset $CLIPSEARCH_TOKEN)")):
        check_bind("127.0.0.1", "  ")


def test_serving_from_python_keeps_the_same_rule(store, monkeypatch) -> None:
    import uvicorn

    from clipsearch.server import serve

    started: list[str] = []
    # never listen for real here (least of all on 0.0.0.0): record what would have been served
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: started.append(self.config.host))
    with pytest.raises(ValueError, match=re.escape("refusing to listen on 0.0.0.0 without a token: anyone who can reach")):
        serve(create_app(store), host="0.0.0.0")
    with pytest.raises(ValueError, match=re.escape("refusing to listen on 0.0.0.0 with the store readable without the token")):
        serve(create_app(store, token=TOKEN), host="0.0.0.0")
    serve(create_app(store, token=TOKEN, private=True), host="0.0.0.0")
    serve(create_app(store))
    assert started == ["0.0.0.0", "127.0.0.1"]


def test_serve_reports_a_missing_store_in_one_line(cli, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "--store", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "no store at" in result.output and "Traceback" not in result.output


def test_a_bad_cap_is_refused_when_the_app_is_made(store) -> None:
    with pytest.raises(ValueError, match=re.escape("max_body must be a positive number of bytes, got 0")):
        create_app(store, max_body=0)


def test_max_body_sizes_parse() -> None:
    from clipsearch.server.limits import parse_size

    assert parse_size("20MB") == 20 * 1024 * 1024
    assert parse_size("512k") == 512 * 1024
    assert parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert parse_size("1048576") == 1048576
    with pytest.raises(ValueError, match=re.escape("size 'lots' is not a number of bytes; use e.g. 20MB, 512KB or 1048576")):
        parse_size("lots")


SERVE_SCRIPT = """
import sys, typer
from clipsearch.cli.serve import register
app = typer.Typer()
register(app)
app.command("noop")(lambda: None)
app(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """Addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # the kernel prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, raw))
    return found


def test_serve_listens_on_loopback_by_default(store, cli) -> None:
    port = _free_port()
    env = {**os.environ, "CLIPSEARCH_TOKEN": ""}
    env.pop("CLIPSEARCH_TOKEN")
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, "serve", "--store", str(store.root), "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 90
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    body = json.loads(response.read())
                    server_header = response.headers.get("server")
                    break
            except OSError:
                time.sleep(0.25)
        assert body == {"status": "ok"}, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert server_header is None  # no server banner
        assert _listening(port) == {"127.0.0.1"}

        # the same port again: refused in one line before anything starts
        result = CliRunner().invoke(cli, ["serve", "--store", str(store.root), "--port", str(port)])
        assert result.exit_code == 2
        assert f"cannot listen on 127.0.0.1:{port}: address already in use; choose another --port or --host" in result.output
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert f"at http://127.0.0.1:{port}/" in out
    assert "Traceback" not in out
