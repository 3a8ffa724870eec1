import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.manifest import SCHEMA, SPLITS
from pipelines.readers import (
    DATASETS,
    AnnotationError,
    FileIndex,
    holdout_video_ids,
    read_annotations,
)

FIXTURES = Path(__file__).parent / "fixtures"
TAB = "\t"


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def by_split(table: pa.Table) -> dict[str, list[dict]]:
    rows = table.to_pylist()
    return {split: [r for r in rows if r["split"] == split] for split in SPLITS}


def videos_of(rows: list[dict]) -> set[str]:
    return {r["video_id"] for r in rows}


def check_shape(table: pa.Table) -> None:
    assert table.schema.equals(SCHEMA)
    splits = table.column("split").to_pylist()
    order = [s for i, s in enumerate(splits) if i == 0 or splits[i - 1] != s]
    assert order == [s for s in SPLITS if s in splits]  # one run per split, in SPLITS order
    assert all(Path(p).is_absolute() for p in table.column("video_path").to_pylist())


# -- MSR-VTT


def test_msrvtt_9k(tmp_path):
    result = read_annotations("msrvtt-9k", FIXTURES / "msrvtt", tmp_path / "videos")
    check_shape(result.table)
    rows = by_split(result.table)
    assert result.absent_splits == {} and result.bad_rows == 0
    assert videos_of(rows["train"]) | videos_of(rows["val"]) == {f"video{i}" for i in range(8)}
    assert len(videos_of(rows["val"])) == 1  # 5% of 8 rounds to 0, but val gets at least one video
    assert len(rows["train"]) + len(rows["val"]) == 17
    # test captions come from JSFUSION, one per video, not from MSRVTT_data.json
    assert [(r["video_id"], r["caption"]) for r in rows["test"]] == [
        ("video9", "a girl puts a sweater on a dog"),
        ("video10", "a man, a woman and a child walk on a beach"),
        ("video11", "a person slices tomatoes"),
    ]
    assert rows["test"][0]["video_path"] == str(tmp_path / "videos" / "video9.mp4")


def test_msrvtt_7k_uses_its_own_list(tmp_path):
    rows = by_split(read_annotations("msrvtt-7k", FIXTURES / "msrvtt", tmp_path, val_fraction=0).table)
    assert videos_of(rows["train"]) == {f"video{i}" for i in range(5)}
    assert len(rows["test"]) == 3


def test_val_holdout_is_whole_videos_deterministic_by_seed_and_sized_by_fraction(tmp_path):
    def val(fraction, seed):
        result = read_annotations(
            "msrvtt-9k", FIXTURES / "msrvtt", tmp_path, val_fraction=fraction, seed=seed
        )
        rows = by_split(result.table)
        assert not videos_of(rows["train"]) & videos_of(rows["val"])  # whole videos, all their captions
        return videos_of(rows["val"])

    assert val(0.05, 24) == val(0.05, 24)
    assert len({frozenset(val(0.25, seed)) for seed in range(10)}) > 1
    assert len(val(0.25, 24)) == 2 and len(val(0.5, 24)) == 4
    assert val(0.25, 7) <= val(0.5, 7)  # a larger fraction holds out a superset
    with pytest.raises(ValueError, match="val_fraction"):
        read_annotations("msrvtt-9k", FIXTURES / "msrvtt", tmp_path, val_fraction=1.0)
    result = read_annotations("msrvtt-9k", FIXTURES / "msrvtt", tmp_path, val_fraction=0)
    assert "val_fraction=0" in result.absent_splits["val"]


def test_holdout_ignores_input_order_and_keeps_a_training_video():
    ids = [f"v{i}" for i in range(40)]
    assert holdout_video_ids(ids, 0.1, 3) == holdout_video_ids(reversed(ids), 0.1, 3)
    assert len(holdout_video_ids(ids, 0.1, 3)) == 4
    assert len(holdout_video_ids(["a", "b"], 0.99, 0)) == 1
    assert holdout_video_ids(["a"], 0.5, 0) == set()


def test_msrvtt_absent_splits(tmp_path):
    ann = copy_fixture("msrvtt", tmp_path)
    (ann / "MSRVTT_JSFUSION_test.csv").unlink()
    result = read_annotations("msrvtt-9k", ann, tmp_path)
    assert list(result.absent_splits) == ["test"]
    assert "MSRVTT_JSFUSION_test.csv not found in" in result.absent_splits["test"]
    assert str(ann) in result.absent_splits["test"]

    (ann / "MSRVTT_JSFUSION_test.csv").write_text((FIXTURES / "msrvtt/MSRVTT_JSFUSION_test.csv").read_text())
    (ann / "MSRVTT_data.json").unlink()
    result = read_annotations("msrvtt-9k", ann, tmp_path)
    assert set(result.absent_splits) == {"train", "val"}
    assert "MSRVTT_data.json not found" in result.absent_splits["train"]
    assert result.table.num_rows == 3


def test_msrvtt_skips_empty_captions_and_uncaptioned_videos(tmp_path):
    ann = copy_fixture("msrvtt", tmp_path)
    data = (ann / "MSRVTT_data.json").read_text().replace('"a formula one race"', '" "')
    (ann / "MSRVTT_data.json").write_text(data)
    (ann / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo3\nvideo8\nvideo0\n")  # video8 has none
    result = read_annotations("msrvtt-9k", ann, tmp_path, val_fraction=0)
    assert result.bad_rows == 2
    assert result.table.num_rows == 3 + 1 + 3


# -- MSVD


def test_msvd(tmp_path):
    result = read_annotations("msvd", FIXTURES / "msvd", tmp_path / "v")
    check_shape(result.table)
    rows = by_split(result.table)
    assert result.absent_splits == {} and result.bad_rows == 0
    assert [len(rows[s]) for s in SPLITS] == [6, 2, 5]  # every caption of a test video is a query
    assert videos_of(rows["val"]) == {"00jrXRMlZOY_0_10"}  # its own list, no hold-out
    assert rows["train"][0]["video_path"] == str(tmp_path / "v" / "-4wsuPCjDBc_5_15.avi")
    assert rows["train"][0]["caption"] == "a squirrel is eating a peanut in it's shell"


def test_msvd_absent_val_list_is_not_held_out(tmp_path):
    ann = copy_fixture("msvd", tmp_path)
    (ann / "val_list.txt").unlink()
    result = read_annotations("msvd", ann, tmp_path)
    assert "val_list.txt not found" in result.absent_splits["val"]
    assert len(by_split(result.table)["train"]) == 6


# -- LSMDC

CLIP = "0001_American_Beauty_00.00.51.926-00.00.54.129"


@pytest.mark.parametrize("layout", ["flat", "movie folders", "none yet"])
def test_lsmdc_layouts(tmp_path, layout):
    videos = tmp_path / "videos"
    videos.mkdir()
    clips = [
        CLIP,
        "0001_American_Beauty_00.01.02.000-00.01.05.500",
        "0002_As_Good_As_It_Gets_00.02.10.100-00.02.12.300",
    ]
    for clip in clips:
        movie = clip.rsplit("_", 1)[0]
        if layout == "flat":
            (videos / f"{clip}.avi").touch()
        elif layout == "movie folders":
            (videos / movie).mkdir(exist_ok=True)
            (videos / movie / f"{clip}.avi").touch()
    result = read_annotations("lsmdc", FIXTURES / "lsmdc", videos)
    check_shape(result.table)
    paths = dict(
        zip(result.table["video_id"].to_pylist(), result.table["video_path"].to_pylist(), strict=True)
    )
    nested = videos / "0001_American_Beauty" / f"{CLIP}.avi"
    assert paths[CLIP] == str(nested if layout == "movie folders" else videos / f"{CLIP}.avi")
    # a clip whose movie folder exists but whose file does not is expected in that folder
    casablanca = "0003_CASABLANCA_00.00.10.000-00.00.12.000"
    assert paths[casablanca] == str(videos / f"{casablanca}.avi")


def test_lsmdc_splits_quotes_and_empty_captions(tmp_path):
    result = read_annotations("lsmdc", FIXTURES / "lsmdc", tmp_path)
    rows = by_split(result.table)
    assert [len(rows[s]) for s in SPLITS] == [4, 1, 2] and result.absent_splits == {}
    assert rows["train"][1]["caption"] == 'He says "hello" to SOMEONE\'s neighbour.'
    assert rows["test"][1]["caption"] == 'An owl flies over the "castle".'

    ann = copy_fixture("lsmdc", tmp_path)
    empty = TAB.join(["0004_X_00.00.01.000-00.00.02.000"] + ["00.00.01.000"] * 4 + [""])
    with open(ann / "LSMDC16_annos_training.csv", "a") as f:
        f.write(empty + "\n\n")  # an empty caption is skipped and counted; a blank line is ignored
    result = read_annotations("lsmdc", ann, tmp_path)
    assert result.bad_rows == 1 and result.table.num_rows == 7


def test_lsmdc_holds_out_val_when_its_file_is_absent(tmp_path):
    ann = copy_fixture("lsmdc", tmp_path)
    (ann / "LSMDC16_annos_val.csv").unlink()
    rows = by_split(read_annotations("lsmdc", ann, tmp_path, val_fraction=0.25, seed=1).table)
    assert len(videos_of(rows["val"])) == 1 and len(rows["train"]) == 3
    assert "CASABLANCA" not in str(rows)
    result = read_annotations("lsmdc", ann, tmp_path, val_fraction=0)
    assert "LSMDC16_annos_val.csv not found" in result.absent_splits["val"]


# -- user manifests

USER_ROWS = [
    {"video": "clips/a.mp4", "text": "a dog runs on the beach", "split": "train"},
    {"video": "clips/a.mp4", "text": "a dog, running", "split": "train"},
    {"video": "clips/b.mp4", "text": "a cat sleeps on a sofa", "split": None},
    {"video": "clips/c.mp4", "text": "a bird sings", "split": "train"},
    {"video": "clips/d.mp4", "text": "a car drives at night", "split": "test"},
]


def user_manifest(fmt: str, tmp_path: Path) -> Path:
    if fmt == "parquet":
        path = tmp_path / "user.parquet"
        pq.write_table(pa.Table.from_pylist(USER_ROWS), path)
        return path
    return Path(shutil.copy(FIXTURES / "manifest" / "user.csv", tmp_path))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_user_manifest_defaults_and_relative_paths(tmp_path, fmt):
    path = user_manifest(fmt, tmp_path)
    result = read_annotations("manifest", path, None, val_fraction=0.05)
    check_shape(result.table)
    rows = by_split(result.table)
    assert result.absent_splits == {} and result.bad_rows == 0
    # no split -> train; no val -> one of the 3 training videos held out, like MSR-VTT
    assert videos_of(rows["train"]) | videos_of(rows["val"]) == {"a", "b", "c"}  # ids default to file stems
    assert len(videos_of(rows["val"])) == 1
    assert rows["test"] == [
        {"video_id": "d", "video_path": str(tmp_path / "clips/d.mp4"), "caption": "a car drives at night",
         "split": "test"}
    ]  # fmt: skip
    # relative paths resolve against --videos when given, else against the manifest's folder
    other = read_annotations("manifest", path, tmp_path / "elsewhere").table
    assert set(other["video_path"].to_pylist()) == {
        str(tmp_path / f"elsewhere/clips/{v}.mp4") for v in "abcd"
    }


def test_user_manifest_jsonl_ids_splits_and_absolute_paths(tmp_path):
    path = Path(shutil.copy(FIXTURES / "manifest" / "user.jsonl", tmp_path))
    with open(path, "a") as f:
        f.write(f'{{"path": "{tmp_path / "abs" / "e.mp4"}", "sentence": "an absolute path"}}\n')
    result = read_annotations("manifest", path, None)
    rows = by_split(result.table)
    assert result.absent_splits == {}  # val is given, so nothing is held out
    assert [(r["video_id"], r["video_path"]) for r in rows["train"]] == [
        ("dog", str(tmp_path / "clips/a.mp4")),
        ("e", str(tmp_path / "abs/e.mp4")),
    ]
    assert videos_of(rows["val"]) == {"b"} and videos_of(rows["test"]) == {"d"}


def test_user_manifest_absent_splits_and_empty_captions(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("video_path,caption\nx.mp4,one\nx.mp4,\ny.mp4,two\n")
    result = read_annotations("manifest", path, None, val_fraction=0)
    assert result.bad_rows == 1
    assert set(result.absent_splits) == {"val", "test"}
    assert "no rows with split 'test'" in result.absent_splits["test"]


# -- errors


def test_unknown_dataset_and_missing_inputs(tmp_path):
    with pytest.raises(ValueError, match="expected one of " + ", ".join(DATASETS)):
        read_annotations("kinetics", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="needs the videos folder"):
        read_annotations("msvd", FIXTURES / "msvd", None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_annotations("msvd", tmp_path / "nope", tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing to prepare for msrvtt-9k"):
        read_annotations("msrvtt-9k", tmp_path, tmp_path)  # an empty folder
    with pytest.raises(ValueError, match=r"\.csv, \.jsonl or \.parquet"):
        (tmp_path / "m.tsv").write_text("video_path\tcaption\n")
        read_annotations("manifest", tmp_path / "m.tsv", None)


def test_bad_json_names_the_file(tmp_path):
    ann = copy_fixture("msvd", tmp_path)
    (ann / "captions_msvd.json").write_text('{"a": ["x"],\n "b": [oops]}')
    with pytest.raises(AnnotationError, match=r"captions_msvd\.json: invalid JSON at line 2"):
        read_annotations("msvd", ann, tmp_path)


def test_msrvtt_missing_key_names_it(tmp_path):
    ann = copy_fixture("msrvtt", tmp_path)
    (ann / "MSRVTT_data.json").write_text('{"sentences": [{"video_id": "video0"}]}')
    with pytest.raises(AnnotationError, match=r"MSRVTT_data\.json: sentences\[0\] has no string 'caption'"):
        read_annotations("msrvtt-9k", ann, tmp_path)
    (ann / "MSRVTT_data.json").write_text('{"videos": []}')
    with pytest.raises(AnnotationError, match="no 'sentences' key"):
        read_annotations("msrvtt-9k", ann, tmp_path)


def test_wrong_column_count_names_file_and_line(tmp_path):
    ann = copy_fixture("msrvtt", tmp_path)
    with open(ann / "MSRVTT_JSFUSION_test.csv", "a") as f:
        f.write("ret3,msr12,video12\n")
    with pytest.raises(
        AnnotationError, match=r"MSRVTT_JSFUSION_test\.csv line 5: 3 columns, but the header has 4"
    ):
        read_annotations("msrvtt-9k", ann, tmp_path)

    ann = copy_fixture("lsmdc", tmp_path)
    with open(ann / "LSMDC16_challenge_1000_publictect.csv", "a") as f:
        f.write("1003_Clip_00.00.01.000-00.00.02.000  00.00.01.000  a caption after spaces, not tabs\n")
    with pytest.raises(AnnotationError, match=r"publictect\.csv line 3: expected 6 tab-separated columns"):
        read_annotations("lsmdc", ann, tmp_path)


def test_missing_column_names_it(tmp_path):
    (tmp_path / "m.csv").write_text("video_path,label\nx.mp4,1\n")
    with pytest.raises(AnnotationError, match=r"m\.csv: no caption column \(expected one of caption, text"):
        read_annotations("manifest", tmp_path / "m.csv", None)
    (tmp_path / "m.jsonl").write_text('{"video": "x.mp4", "caption": "c"}\n{"caption": "c"}\n')
    with pytest.raises(AnnotationError, match=r"m\.jsonl line 2: no video_path column"):
        read_annotations("manifest", tmp_path / "m.jsonl", None)
    pq.write_table(pa.table({"video": ["x.mp4"]}), tmp_path / "m.parquet")
    with pytest.raises(AnnotationError, match="no caption column"):
        read_annotations("manifest", tmp_path / "m.parquet", None)
    (tmp_path / "j.csv").write_text("video_id,caption\nx,c\n")
    with pytest.raises(AnnotationError, match=r"j\.csv: no video_path column"):
        read_annotations("manifest", tmp_path / "j.csv", None)
    ann = copy_fixture("msrvtt", tmp_path)
    (ann / "MSRVTT_train.9k.csv").write_text("vid\nvideo0\n")
    with pytest.raises(AnnotationError, match=r"MSRVTT_train\.9k\.csv line 1: header has no video_id column"):
        read_annotations("msrvtt-9k", ann, tmp_path)


def test_user_manifest_bad_rows_are_fatal_where_they_would_mislead(tmp_path):
    cases = {
        "split 'dev' is not one of train, val, test": "video,caption,split\nx.mp4,c,dev\n",
        "line 3: empty video path": "video,caption\nx.mp4,c\n,c\n",
        "line 3: video_id 'x' already names": "video,caption\nx.mp4,c\nother/x.mp4,c\n",
    }
    for message, text in cases.items():
        (tmp_path / "m.csv").write_text(text)
        with pytest.raises(AnnotationError, match=message):
            read_annotations("manifest", tmp_path / "m.csv", None)
    (tmp_path / "m.jsonl").write_text('{"video": "x.mp4", "caption": "c"}\n{"video": \n')
    with pytest.raises(AnnotationError, match=r"m\.jsonl line 2: invalid JSON"):
        read_annotations("manifest", tmp_path / "m.jsonl", None)
    (tmp_path / "m.parquet").write_bytes(b"not parquet")
    with pytest.raises(AnnotationError, match="not a readable Parquet file"):
        read_annotations("manifest", tmp_path / "m.parquet", None)


def test_file_index_lists_each_folder_once(tmp_path, monkeypatch):
    for i in range(50):
        (tmp_path / f"{i}.mp4").touch()
    (tmp_path / "sub").mkdir()
    calls = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda d: calls.append(d) or real(d))
    index = FileIndex()
    assert all(index.is_file(tmp_path / f"{i}.mp4") for i in range(50))
    assert not index.is_file(tmp_path / "50.mp4") and not index.is_file(tmp_path / "sub")
    assert index.is_dir(tmp_path / "sub") and not index.is_file(tmp_path / "nowhere" / "0.mp4")
    assert len(calls) == 2
