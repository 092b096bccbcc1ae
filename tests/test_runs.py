"""Run folders: creation and resume checks, atomic writes, metric files, curves."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pytest

from nettrain.errors import TrainingError
from nettrain.runs import (METRIC_COLUMNS, MetricsLog, RunDir, plot_curves, read_metrics, replace_atomically,
                           write_json, write_text_atomic)


def row(epoch, **values):
    return {"epoch": epoch, "train_loss": 1 / 3, "train_accuracy": 0.5, "val_loss": None, "val_accuracy": None,
            "lr": 0.1, "seconds": 2.0, "img_per_s": 50.0, **values}


def one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


# --------------------------------------------------------------------------- folders

def test_default_names_are_timestamped_and_never_reused(tmp_path):
    now = datetime(2025, 1, 2, 3, 4, 5)
    first = RunDir.create("exp", root=tmp_path, now=now)
    second = RunDir.create("exp", root=tmp_path, now=now)
    assert first.path == tmp_path / "exp-20250102-030405" and second.path == tmp_path / "exp-20250102-030405-2"
    assert first.checkpoints.is_dir() and second.checkpoints.is_dir()


def test_a_folder_holding_a_run_is_refused_and_resume_needs_a_checkpoint(tmp_path):
    run = RunDir.create("exp", tmp_path / "run")
    with pytest.raises(TrainingError) as e:
        RunDir.open(run.path)
    assert "no checkpoints/last.npz" in one_line(e)
    run.last.write_bytes(b"a checkpoint")
    assert RunDir.open(run.path).path == run.path
    with pytest.raises(TrainingError) as e:
        RunDir.create("exp", run.path)
    assert f"--resume {run.path}" in one_line(e)
    with pytest.raises(TrainingError) as e:
        RunDir.open(tmp_path / "nope")
    assert "no such run folder" in one_line(e)


def test_an_unwritable_place_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainingError) as e:
        RunDir.create("exp", tmp_path / "file" / "run")
    assert "cannot create the run folder" in one_line(e) and "output.dir" in str(e.value)


def test_leftover_temporaries_are_removed_and_nothing_else(tmp_path):
    run = RunDir.create("exp", tmp_path / "run")
    leftovers = [run.path / ".metrics.csv.123.tmp", run.checkpoints / ".last.npz.9.tmp", run.path / ".curves.7.tmp.png"]
    kept = [run.path / "notes.txt", run.path / ".metrics.csv.tmp", run.checkpoints / "last.npz"]
    for p in leftovers + kept:
        p.write_text("x")
    RunDir.open(run.path)
    assert [p.exists() for p in leftovers] == [False] * 3 and all(p.exists() for p in kept)


# --------------------------------------------------------------------------- atomic writes

def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "config.yaml"
    write_text_atomic(path, "old\n")

    def fail_half_way(f):
        f.write("new, but")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        replace_atomically(path, fail_half_way)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    with pytest.raises(TrainingError) as e:
        write_text_atomic(tmp_path / "missing" / "x.yaml", "text")
    assert "cannot write" in one_line(e)
    write_json(tmp_path / "s.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": [1, 2]}


# --------------------------------------------------------------------------- metrics

def test_rows_round_trip_exactly_through_csv_and_jsonl(tmp_path):
    run = RunDir.create("exp", tmp_path / "run")
    log = MetricsLog(run, METRIC_COLUMNS)
    log.append(row(1))
    log.append(row(2, val_loss=math.inf, val_accuracy=0.1 + 0.2))
    csv_rows, json_rows = read_metrics(run.metrics_csv), read_metrics(run.metrics_jsonl)
    assert run.metrics_csv.read_text().splitlines()[0] == ",".join(METRIC_COLUMNS)  # one header
    assert csv_rows[0] == row(1) and csv_rows[1]["val_accuracy"] == 0.1 + 0.2  # floats written by repr
    assert csv_rows[1]["val_loss"] == math.inf and json_rows[1]["val_loss"] is None  # JSON has no infinity
    assert json_rows[0] == row(1)


def test_truncate_keeps_earlier_epochs_and_writes_the_new_columns(tmp_path):
    run = RunDir.create("exp", tmp_path / "run")
    log = MetricsLog(run, METRIC_COLUMNS)
    for epoch in (1, 2, 3):
        log.append(row(epoch))
    wider = METRIC_COLUMNS[:5] + ["val_top5_accuracy"] + METRIC_COLUMNS[5:]
    kept = MetricsLog(run, wider).truncate(2)
    assert [r["epoch"] for r in kept] == [1, 2]
    assert run.metrics_csv.read_text().splitlines()[0] == ",".join(wider)
    assert [r["epoch"] for r in read_metrics(run.metrics_csv)] == [1, 2]
    # without metrics.jsonl the CSV is the source
    run.metrics_jsonl.unlink()
    assert [r["epoch"] for r in MetricsLog(run, METRIC_COLUMNS).truncate(1)] == [1]


def test_a_torn_last_jsonl_line_is_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(row(1)) + "\n" + '{"epoch": 2, "train_lo')
    assert read_metrics(path) == [row(1)]
    assert read_metrics(tmp_path / "absent.csv") == []
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TrainingError, match="cannot read metrics"):
        read_metrics(tmp_path / "bad.csv")


# --------------------------------------------------------------------------- curves

def test_curves_png(tmp_path):
    assert plot_curves([], tmp_path / "curves.png") is None
    pytest.importorskip("matplotlib")
    path = plot_curves([row(1, val_loss=0.9, val_accuracy=0.4), row(2)], tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]  # no temporary left
