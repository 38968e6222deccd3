"""`pirecon doctor`: findings and exit codes on the real fixture, clean and broken datasets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pirecon.cli import main
from pirecon.data.doctor import Doctor
from pirecon.data.writer import write_demo_dataset


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("clean") / "ds", "v2.1", (12, 15, 10))


@pytest.fixture
def broken(clean, tmp_path):
    return shutil.copytree(clean, tmp_path / "ds")


def errors(root, **kwargs) -> list[str]:
    return [f"{f.check} {f.location}: {f.detail}" for f in Doctor(root, **kwargs).run() if f.severity == "ERROR"]


def test_fixture_has_warnings_but_no_errors(gr00t_fixture, capsys):
    assert main(["doctor", f"--dataset.root={gr00t_fixture}"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["SEVERITY", "CHECK", "LOCATION", "DETAIL"]
    assert "ERROR" not in out and "0 error(s)" in out
    for expected in ("observation.images.egoview", "no frame_index column", "total_chunks is 0",
                     "'0:100'", "data_path", "start one or more frames after their video"):
        assert expected in out, expected
    assert main(["doctor", f"--dataset.root={gr00t_fixture}", "--strict=true"]) == 1


def test_clean_dataset_is_all_ok(clean, capsys):
    assert main(["doctor", "--dataset.root", str(clean)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("OK") for line in lines[1:-2]) and lines[-1] == "0 error(s), 0 warning(s)"


def test_short_episodes_are_warnings(clean):
    findings = Doctor(clean, min_length=11).run()
    assert [f.detail for f in findings if f.severity == "WARN"] == ["episode 2 has only 10 frame(s) (min_length 11)"]


def test_nan_action_is_an_error(broken, capsys):
    path = broken / "data/chunk-000/episode_000001.parquet"
    table = pq.read_table(path)
    action = np.stack(table.column("action").to_pylist()).astype(np.float32)
    action[3, 0] = np.inf
    column = pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), 3)
    pq.write_table(table.set_column(table.column_names.index("action"), "action", column), path)
    assert main(["doctor", f"--dataset.root={broken}"]) == 1
    assert errors(broken) == ["values data/chunk-000/episode_000001.parquet: column 'action' holds 1 NaN/inf "
                              "values (first at row 3, dimension 0)"]


def test_missing_and_truncated_files_are_errors(broken):
    (broken / "videos/chunk-000/observation.images.top/episode_000002.mp4").unlink()
    data = broken / "data/chunk-000/episode_000000.parquet"
    data.write_bytes(data.read_bytes()[:100])
    found = errors(broken)
    assert any("episode_000002.mp4: video file missing" in e for e in found)
    assert any("episode_000000.parquet: " in e and "cannot read parquet file" in e for e in found)


def test_video_shorter_than_episode_is_an_error(broken, tmp_path):
    short = write_demo_dataset(tmp_path / "short", "v2.1", (5,))
    shutil.copy(short / "videos/chunk-000/observation.images.top/episode_000000.mp4",
                broken / "videos/chunk-000/observation.images.top/episode_000000.mp4")
    found = errors(broken)
    assert found == ["videos videos/chunk-000/observation.images.top/episode_000000.mp4: episode 0: last "
                     "timestamp 1.100 s is past the video's last frame (0.400 s)"]


def test_metadata_errors(broken):
    info = json.loads((broken / "meta/info.json").read_text())
    (broken / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v9"}))
    assert errors(broken) == [f"metadata meta: {broken}/meta/info.json: codebase_version 'v9' is not "
                              f"supported; expected one of v2.0, v2.1, v3.0"]
    (broken / "meta/info.json").unlink()
    assert main(["doctor", f"--dataset.root={broken}"]) == 1


def test_length_mismatch_and_v3(tmp_path):
    root = write_demo_dataset(tmp_path / "ds", "v3.0", (6, 8))
    assert errors(root) == []
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.column_names.index("length"), "length", pa.array([6, 9])), path)
    assert errors(root) == ["episodes data/chunk-000/file-000.parquet: episode 1 has 8 rows, the episode "
                            "table says 9"]
    # The reader refuses the same problem (training never reads a wrong episode boundary).
    from pirecon.data.lerobot import open_dataset
    from pirecon.errors import DatasetError
    with pytest.raises(DatasetError, match=r"file-000.parquet: episode 1 has 8 rows, the episode table says 9 "
                                           r"\(`pirecon doctor` lists every problem\)"):
        open_dataset(root, action_horizon=2)


def set_column(path, name: str, values) -> None:
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.column_names.index(name), name, pa.array(values, pa.int64())), path)


def test_unknown_task_and_shuffled_frames_are_errors_for_doctor_and_reader(broken):
    from pirecon.data.lerobot import open_dataset
    from pirecon.errors import DatasetError

    path = broken / "data/chunk-000/episode_000001.parquet"
    frames = list(range(15))
    frames[4], frames[5] = 5, 4
    set_column(path, "frame_index", frames)
    set_column(broken / "data/chunk-000/episode_000002.parquet", "task_index", [0] * 9 + [7])
    assert errors(broken) == [
        "episodes data/chunk-000/episode_000001.parquet: episode 1: frame_index is 5 at row 4 of the episode; "
        "expected 0, 1, 2, ... in row order",
        "episodes data/chunk-000/episode_000002.parquet: episode 2: task_index [7] names no task of meta/tasks"]
    with pytest.raises(DatasetError, match=r"episode_000001.parquet: episode 1: frame_index is 5 at row 4"):
        open_dataset(broken, action_horizon=2)
    with pytest.raises(DatasetError, match=r"episode_000002.parquet: episode 2: task_index \[7\] names no task"):
        open_dataset(broken, action_horizon=2, episodes=[0, 2])
