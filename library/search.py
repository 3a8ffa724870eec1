"""Search a library: one text encoding per query, then a similarity search over the stored embeddings.

    lib = Library.open("my-library")
    lib.search(["a dog runs on the beach"], k=10)        # one list of hits per query
    lib.search(["..."], k=10, as_arrow=True)              # an Arrow table: query, rank, score, video...
    lib.search_video("clip.mp4", k=10)                    # videos like this one

The model is the library's own copy, so a library found on disk is all a search needs. Rows that failed to
embed are never searched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from library import index as faiss_index
from library import store


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    video_id: str
    video_path: str
    start_s: float
    end_s: float


class Library:
    def __init__(self, path: Path, manifest: dict, records: pa.Table, vectors: np.ndarray, index):
        self.path, self.manifest, self.records, self.vectors, self.index = (
            path,
            manifest,
            records,
            vectors,
            index,
        )
        self._model = None

    @classmethod
    def open(cls, path: str | Path) -> Library:
        """The library at `path`, searched with its approximate index when one matches its rows, else
        exactly."""
        path = Path(path)
        manifest = store.read_manifest(path)
        if manifest is None:
            raise FileNotFoundError(
                f"{path} is not a library (no {store.MANIFEST}); make one with `promptswitch embed`"
            )
        records, vectors = store.searchable(path, manifest["settings"]["dimension"])
        built = manifest.get("index") or {}
        if built.get("fingerprint") == store.fingerprint(path):
            index = faiss_index.load_index(path / store.INDEX_DIR / store.INDEX_FILE)
        else:  # none, or built before the library last changed
            index = faiss_index.build_index(vectors, faiss_index.IndexSpec())  # exact inner product
        return cls(path, manifest, records, vectors, index)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def model(self):
        """The library's model on the CPU, loaded on first use."""
        if self._model is None:
            from library.source import resolve
            from model import build_model
            from orchestrator.training import checkpoint

            source = resolve(str(self.path / store.MODEL_DIR))
            self._model = build_model(source.run.model).eval()
            checkpoint.load_weights(self.path / store.MODEL_DIR, self._model)
        return self._model

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        from model import tokenize

        with torch.no_grad():
            return self.model.encode_text(tokenize(list(texts))).float().numpy()

    def search(self, texts: str | list[str], k: int = 10, *, as_arrow: bool = False):
        """The `k` best rows for each text: a list of `Hit` lists, or one Arrow table."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.search_vectors(self.encode_texts(texts), k, as_arrow=as_arrow, names=texts)

    def search_video(self, video: str | Path, k: int = 10, *, as_arrow: bool = False):
        """Rows like the video at `video` (sampled and transformed as the library's were)."""
        query = self.encode_video_file(video)[None]
        return self.search_vectors(query, k, as_arrow=as_arrow, names=[str(video)])

    def encode_video_file(self, video: str | Path) -> np.ndarray:
        import torch

        from model import normalize_frames
        from pipelines.decode import read_sampled_frames
        from pipelines.sampling import frame_indices
        from pipelines.transforms import eval_transform

        s = self.manifest["settings"]
        raw = read_sampled_frames(
            str(video),
            lambda n: frame_indices(n, s["frames_per_group"], s["eval_groups"]),
            cache_path=None,
            short_side=s["image_size"],
        )
        frames = torch.from_numpy(eval_transform(raw, s["image_size"]))[None]
        with torch.no_grad():
            return self.model.encode_video(normalize_frames(frames)).float().numpy()[0]

    def search_vectors(self, queries: np.ndarray, k: int, *, as_arrow: bool = False, names=None):
        """The `k` best rows for each query embedding (L2-normalised), as `search` returns them."""
        scores, rows = faiss_index.search(self.index, np.ascontiguousarray(queries, np.float32), k)
        hits = []
        for q_scores, q_rows in zip(scores, rows, strict=True):
            found = q_rows >= 0
            records = self.records.take(pa.array(q_rows[found])).to_pylist()
            pairs = zip(q_scores[found], records, strict=True)
            hits.append([Hit(rank + 1, float(score), **rec) for rank, (score, rec) in enumerate(pairs)])
        if not as_arrow:
            return hits
        names = names or [str(i) for i in range(len(hits))]
        return pa.Table.from_pylist(
            [{"query": q, **vars(h)} for q, per_query in zip(names, hits, strict=True) for h in per_query]
        )
