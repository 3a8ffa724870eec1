"""`promptswitch serve` as a user runs it: a subprocess serving a real library on a free loopback port."""

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest

from library.embed import EmbedConfig, embed_library
from library.search import Library
from library.source import resolve
from tests.library import browser
from tests.library.test_embed import _checkpoint

pytestmark = pytest.mark.slow


class Server:
    def __init__(self, port: int, library: Path, captions: list[str]):
        self.port, self.library, self.captions = port, library, captions

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
        """The path exactly as given (no client normalises `..` or `%2f` away)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read(), dict(response.getheaders())
        finally:
            conn.close()

    def json(self, path: str):
        status, body, _ = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)


@pytest.fixture(scope="module")
def server(ray_local, synth, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    _checkpoint(tmp / "ckpt", synth)
    embed_library(resolve(str(tmp / "ckpt")), synth, tmp / "lib", EmbedConfig(batch_size=8))
    with socket.socket() as s:  # a free port (the tiny window before the server takes it is acceptable)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp / "serve.log").open("w+")
    # Joins the test session's cluster (one Ray on a small CI machine); a user's run starts its own.
    address = ray_local.get_runtime_context().gcs_address
    promptswitch = Path(sys.executable).with_name("promptswitch")
    proc = subprocess.Popen(
        [str(promptswitch), "serve", str(tmp / "lib"), "--port", str(port), "--address", address],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    captions = pq.read_table(synth)["caption"].to_pylist()
    srv = Server(port, tmp / "lib", captions)
    deadline = time.monotonic() + 120
    while True:
        try:
            if srv.get("/stats")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"promptswitch serve did not come up:\n{log.read()[-4000:]}")
        time.sleep(0.5)
    yield srv
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends: Serve must go down cleanly
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # (a shell's background job ignores SIGINT from the start)
        proc.kill()
        from ray import serve

        serve.shutdown()  # its actors live in this session's cluster: free them for the tests that follow
        pytest.fail("promptswitch serve did not stop within 60 s of SIGINT")
    log.seek(0)
    output = log.read()
    assert code == 0, output[-4000:]
    assert f"at http://127.0.0.1:{port}/" in output and "promptswitch: stopping" in output


def test_search_ranks_as_the_library_does(server):
    caption = server.captions[0]
    found = server.json(f"/search?q={quote(caption)}&k=3")
    assert found["query"] == caption
    hits = found["hits"]
    expected = Library.open(server.library).search(caption, 3)[0]
    assert [h["video_id"] for h in hits] == [h.video_id for h in expected]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], abs=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    rows = Library.open(server.library).records.to_pylist()
    for h in hits:  # files are named by row number, and that row is the hit's
        row = int(h["video"].removeprefix("/video/"))
        assert h["thumbnail"] == f"/thumbnail/{row}" and rows[row]["video_id"] == h["video_id"]


@pytest.mark.parametrize(
    "path",
    [
        "/search", "/search?q=", "/search?q=%20", "/search?q=a&k=abc", "/search?q=a&k=0",
        "/search?q=a&k=100000", "/video/999999", "/video/..%2f..%2fetc%2fpasswd", "/video/../../etc/passwd",
        "/video/%2e%2e", "/thumbnail/-1", "/thumbnail/1e3", "/nothing-here",
    ],
)  # fmt: skip
def test_bad_requests_get_a_4xx_with_a_message(server, path):
    status, body, _ = server.get(path)
    assert 400 <= status < 500, (path, status, body)
    assert json.loads(body)["detail"], path
    assert b"root:" not in body


def test_files_are_served_by_row_with_ranges(server):
    path = Path(Library.open(server.library).records.to_pylist()[0]["video_path"])
    status, body, _ = server.get("/video/0")
    assert status == 200 and body == path.read_bytes()
    status, body, headers = server.get("/video/0", {"Range": "bytes=0-99"})
    assert (status, body) == (206, path.read_bytes()[:100])
    assert headers["content-range"] == f"bytes 0-99/{path.stat().st_size}"
    status, body, headers = server.get("/thumbnail/0")
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"


def test_concurrent_queries_are_batched(server):
    queries = server.captions[:8]
    for _ in range(3):  # a burst that the scheduler happens to serialise is retried, not a failure
        with ThreadPoolExecutor(len(queries)) as pool:
            results = list(pool.map(lambda q: server.json(f"/search?q={quote(q)}&k=5"), queries))
        assert [r["query"] for r in results] == queries and all(len(r["hits"]) == 5 for r in results)
        if server.json("/stats")["largest_batch"] > 1:
            return
    pytest.fail(f"8 concurrent queries were never encoded together: {server.json('/stats')}")


@pytest.mark.skipif(not browser.CHROMIUM.exists(), reason="no /usr/bin/chromium (make test installs it)")
def test_the_page_shows_the_hits_in_a_browser(server, tmp_path):
    caption = server.captions[0]
    top = server.json(f"/search?q={quote(caption)}&k=3")["hits"]
    page = f"http://127.0.0.1:{server.port}/?q={quote(caption)}&k=3"  # the page searches q on load
    dom = browser.dump_dom(page)
    assert re.findall(r'data-video-id="([^"]+)"', dom) == [h["video_id"] for h in top]
    assert f'poster="{top[0]["thumbnail"]}"' in dom  # the thumbnail is the player's poster
    assert "3 hits for" in dom
    shot = browser.screenshot(page, tmp_path / "page.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
