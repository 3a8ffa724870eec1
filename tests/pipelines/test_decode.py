"""The decoding task, as a decoding worker runs it: in a fresh process, on real mp4 files."""

import subprocess
import sys

from pipelines.synth import write_synthetic_dataset

# A decoding worker's whole life: unpickle the task, decode training rows (with their tokens) and evaluation
# rows, then say which heavy packages it loaded.
WORKER = """
import sys
import numpy as np
from pipelines.decode import decode_batch
from pipelines.manifest import read_manifest

paths = np.array(sorted(set(read_manifest(sys.argv[1])["video_path"].to_pylist())), dtype=object)
tokens = np.arange(len(paths) * 77, dtype=np.int32).reshape(len(paths), 77)
batch = {"video_path": paths, "video_index": np.arange(len(paths)), "tokens": tokens}
options = dict(frames_per_group=4, size=48, short_side=64, cache_path=None, crop_scale=(0.5, 1.0), flip_p=0.5)
train = decode_batch(batch, groups=1, train=True, **options)
assert train["frames"].shape == (len(paths), 4, 3, 48, 48), train["frames"].shape
assert (train["tokens"] == tokens).all() and (train["video_index"] == np.arange(len(paths))).all()
videos = {k: batch[k] for k in ("video_path", "video_index")}
evaluation = decode_batch(videos, groups=2, train=False, **options)
assert evaluation["frames"].shape == (len(paths), 8, 3, 48, 48) and "tokens" not in evaluation
print(sorted(m for m in ("torchvision", "open_clip", "transformers", "timm", "mlflow") if m in sys.modules))
"""


def test_decoding_loads_neither_torchvision_nor_open_clip(tmp_path):
    # One decoding worker per CPU of a decode node: each package here would cost every one of them.
    manifest = write_synthetic_dataset(tmp_path, videos=3, seed=0, frames=24, size=64)
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(manifest)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
