"""`promptswitch serve LIBRARY`: a library's search as a Ray Serve application with a web page.

    GET /                      the page: a search box and a grid of hits (reads ?q=...&k=... on load)
    GET /search?q=...&k=10     {"query", "hits": [{rank, score, video_id, video_path, start_s, end_s,
                                                   video: "/video/<row>", thumbnail: "/thumbnail/<row>"}]}
    GET /video/<row>           the row's video file (Range requests answered, so players can seek)
    GET /thumbnail/<row>       a JPEG of the frame in the middle of the row's time range
    GET /stats                 this replica's rows and batch sizes (how well queries are batched)

Each replica opens the library once. Queries that arrive together are encoded in one batch
(`@serve.batch`): the text encoder costs about the same for one text as for sixteen. Files are only
ever served by row number, a row of the library: no part of a request's path reaches the file system.
"""

from __future__ import annotations

import asyncio
import functools
import io
import signal
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, Response
from ray import serve

APP = "promptswitch"
PAGE = Path(__file__).with_name("page.html")
MAX_K = 1000

api = FastAPI(title="promptswitch search", docs_url=None, redoc_url=None, openapi_url=None)


# Above the class: `serve.ingress` pickles the app's routes when the class is defined, with the globals
# that exist by then.
@functools.lru_cache(maxsize=1024)
def _thumbnail(path: str, start_s: float, end_s: float) -> bytes:
    """A JPEG of the frame in the middle of the time range."""
    from PIL import Image

    from pipelines.video import open_video

    video = open_video(path)
    middle = round((start_s + end_s) / 2 * video.fps)
    frame = video.read([min(max(middle, 0), video.num_frames - 1)])[0]
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=85)
    return out.getvalue()


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
@serve.ingress(api)
class SearchApp:
    def __init__(self, library: str):
        from library.search import Library

        self.library = Library.open(library)
        self.rows = self.library.records.to_pylist()
        # Hits name their row by path and time range, which identify a row: map them back to row numbers.
        self.row_of = {(r["video_path"], r["start_s"], r["end_s"]): i for i, r in enumerate(self.rows)}
        self.page = PAGE.read_text()
        self.batches, self.largest_batch = 0, 0

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _search(self, queries: list[tuple[str, int]]) -> list[list]:
        self.batches, self.largest_batch = self.batches + 1, max(self.largest_batch, len(queries))
        texts, most = [q for q, _ in queries], max(k for _, k in queries)
        # In a thread: the event loop keeps answering (and queueing the next batch) while torch encodes.
        hits = await asyncio.to_thread(self._encode_and_search, texts, most)
        return [found[:k] for found, (_, k) in zip(hits, queries, strict=True)]

    def _encode_and_search(self, texts: list[str], k: int) -> list[list]:
        return self.library.search_vectors(self.library.encode_texts(texts), k)

    @api.get("/", response_class=HTMLResponse)
    def index(self):
        return self.page

    @api.get("/search")
    async def search(self, q: str = Query(min_length=1, max_length=2000), k: int = Query(10, ge=1, le=MAX_K)):
        if not q.strip():
            raise HTTPException(400, "q is empty: give a text to search for")
        hits = await self._search((q, k))
        return {"query": q, "hits": [self._hit(h) for h in hits]}

    def _hit(self, h) -> dict:
        row = self.row_of[(h.video_path, h.start_s, h.end_s)]
        return {**vars(h), "video": f"/video/{row}", "thumbnail": f"/thumbnail/{row}"}

    @api.get("/video/{row}")
    def video(self, row: str):
        return FileResponse(self._row(row)["video_path"], media_type="video/mp4")  # answers Range itself

    @api.get("/thumbnail/{row}")
    def thumbnail(self, row: str):
        r = self._row(row)
        return Response(_thumbnail(r["video_path"], r["start_s"], r["end_s"]), media_type="image/jpeg")

    @api.get("/stats")
    def stats(self):
        return {"rows": len(self.rows), "batches": self.batches, "largest_batch": self.largest_batch}

    def _row(self, row: str) -> dict:
        # A string, not an int parameter: "..", "-1" or "1e3" must be a 404, not FastAPI's 422 or a path.
        if not (row.isascii() and row.isdigit()) or int(row) >= len(self.rows):
            raise HTTPException(404, f"no row {row!r} in this library (rows 0..{len(self.rows) - 1})")
        found = self.rows[int(row)]
        if not Path(found["video_path"]).is_file():  # moved or deleted since it was embedded
            raise HTTPException(404, f"row {row}'s video file is no longer there")
        return found


def serve_library(library: Path, *, host: str, port: int, replicas: int, address: str | None) -> int:
    """Serve `library` until Ctrl-C (or SIGTERM), then take the application down."""
    import ray

    from library import store
    from model.config import ConfigError
    from orchestrator.ray_runtime import connect

    if store.read_manifest(library) is None:  # before Ray starts
        raise FileNotFoundError(
            f"{library} is not a library (no {store.MANIFEST}); make one with `promptswitch embed`"
        )
    if replicas < 1 or not 0 < port < 65536:
        raise ConfigError(f"--replicas must be at least 1 and --port in 1..65535, got {replicas} and {port}")
    joined = connect(address, dashboard=False)
    print(f"Ray: {joined}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` shuts down as cleanly as Ctrl-C
    try:
        serve.start(http_options={"host": host, "port": port})
        app = SearchApp.options(num_replicas=replicas).bind(str(library.absolute()))
        serve.run(app, name=APP, route_prefix="/")
        print(f"promptswitch: serving {library} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("promptswitch: stopping", flush=True)
    finally:
        # A second Ctrl-C (or a signal forwarded by a wrapper) must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        serve.delete(APP)
        if not serve.status().applications:  # a joined cluster's Serve may hold others: leave those running
            serve.shutdown()
        if not joined.startswith("joined"):
            ray.shutdown()
    return 0
