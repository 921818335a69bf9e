"""Issue 24: runs that cannot validate, user-caused runtime failures, corrupt run folders.

Real faults throughout, no mocks: a path under a file and /sys (read-only even for root) as
unusable output folders, a link to /dev/full as a file on a full disk (ENOSPC on every write),
``--learning_rate=1e10`` for a divergence, SIGINT for Ctrl-C, truncated files for damaged
checkpoints, config.json, results.json and stored fold results.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import faults
from experiments import flags as flags_lib
from experiments import protocol
from experiments import run_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(ROOT, "experiments", "run.py")
CONFIGS = os.path.join(ROOT, "experiments", "configs")
TINY = ("--steps_per_epoch=2", "--embedding_size=8", "--noreport", "--noexport",
        "--noprogress_bar", "--tsne_points=0", "--radius_images=0", "--nocompute_nmi")


def _cli(*args, timeout=300):
    """run.py as a process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def _last_error(stderr):
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def _digits(tmp_path, **changes):
    base = flags_lib.parse_flagfile(os.path.join(CONFIGS, "digits.cfg"))
    values = dict(output_dir=str(tmp_path / "run"), steps_per_epoch=2, max_epochs=2,
                  embedding_size=8, ccp_pool_size=3, ccp_proxies_per_class=2, folds=2,
                  classes_per_batch=2, samples_per_class=4, progress_bar=False,
                  compute_nmi=False, tsne_points=0, radius_images=0, report=False, export=False)
    values.update(changes)
    return config_lib.validate(base.replace(**values))


# --- case 1: --folds=1 needs a validation source or a stated budget ----------------------------
def test_folds_1_without_a_validation_source_is_refused(tmp_path):
    cub = [f"--data_dir={tmp_path}", "--weights=none", "--folds=1"]
    with pytest.raises(config_lib.ConfigError, match="--ccp with --folds=1 has no validation "
                                                     "split.*--validation_classes=0.25"):
        flags_lib.parse_flagfile("cub.cfg", extra=cub)
    with pytest.raises(config_lib.ConfigError, match="would train --max_epochs=10000 epochs"):
        flags_lib.parse_flagfile("cub.cfg", extra=[*cub, "--noccp"])
    for fine in (["--validation_classes=0.25"], ["--select_on_test"],
                 ["--ccp_projection_every_steps=100", "--max_epochs=30"],
                 ["--noccp", "--max_epochs=30"]):
        flags_lib.parse_flagfile("cub.cfg", extra=[*cub, *fine])
    with pytest.raises(config_lib.ConfigError, match="--validation_classes holds out"):
        flags_lib.parse_flagfile("cub.cfg", extra=[*cub[:2], "--validation_classes=0.25"])
    with pytest.raises(config_lib.ConfigError, match=r"must be in \[0, 1\)"):
        flags_lib.parse_flagfile("cub.cfg", extra=[*cub, "--validation_classes=1"])


@pytest.mark.slow
def test_validation_classes_drive_early_stopping_and_ccp(tmp_path):
    """--folds=1 --validation_classes=0.4: the model trains on 3 of the 5 digit classes and
    validates (MAP@R every epoch, the CCP schedule fed) on the last 2."""
    config = _digits(tmp_path, folds=1, validation_classes=0.4, classes_per_batch=3)
    protocol.run(config)
    stored = json.load(open(os.path.join(config.run.output_dir, "repeat_0", "fold_0",
                                         "fold_result.json")))
    assert (stored["train_classes"], stored["val_classes"]) == (3, 2)
    history = stored["training"]["history"]
    assert len(history) == 2 and all(r["val_map_at_r"] is not None for r in history)
    assert all("ccp_action" in r for r in history)


# --- case 4: user-caused runtime failures: one line, what was kept, an exit status each ------
def test_unusable_output_folders_are_refused_before_anything(tmp_path):
    occupied = tmp_path / "occupied"
    occupied.write_text("a file")
    for path, words in ((str(occupied), "is a file, not a folder"),
                        (str(occupied / "run"), f"{occupied} is a file"),
                        ("/sys/ccp_test_run", "cannot be written")):  # read-only, even for root
        with pytest.raises(run_folder.RunFolderError, match=words):
            run_folder.check_output_dir(path)
    run_folder.check_output_dir(str(tmp_path / "new" / "run"))
    assert sorted(os.listdir(tmp_path)) == ["occupied"]  # the probe left nothing


def test_cli_checks_the_output_folder_before_the_data(tmp_path):
    """CUB with an empty --data_dir would fail its data check; the folder fails first."""
    started = time.monotonic()
    out = _cli("--flagfile=cub.cfg", f"--data_dir={tmp_path}", "--output_dir=/sys/ccp_run")
    assert out.returncode == faults.USAGE_ERROR
    assert "--output_dir=/sys/ccp_run cannot be written" in _last_error(out.stderr)
    assert time.monotonic() - started < 60


def test_describe_gives_each_failure_its_exit_status(tmp_path):
    import tensorflow as tf

    folder = str(tmp_path)
    full = tf.errors.ResourceExhaustedError(None, None, "ckpt-3.data: No space left on device")
    memory = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    cases = [(OSError(errno.ENOSPC, "No space left on device"), faults.WRITE_FAILED),
             (full, faults.WRITE_FAILED), (memory, faults.OUT_OF_MEMORY),
             (FloatingPointError("non-finite loss at epoch 2. More"), faults.DIVERGED),
             (KeyboardInterrupt(), faults.INTERRUPTED),
             (config_lib.ConfigError("bad\nflag"), faults.USAGE_ERROR)]
    for error, code in cases:
        status, message = faults.describe(error, folder)
        assert status == code and "\n" not in message
    assert faults.describe(ZeroDivisionError("a bug"), folder) is None  # traceback
    assert len({faults.USAGE_ERROR, faults.WRITE_FAILED, faults.DIVERGED,
                faults.OUT_OF_MEMORY, faults.INTERRUPTED, 1}) == 6


@pytest.mark.slow
def test_disk_full_says_what_was_kept(tmp_path):
    """A real ENOSPC: the file fold 0's test embeddings are written to is a link to /dev/full
    (every write fails with "No space left on device"), after the fold's checkpoints were
    saved."""
    out_dir = tmp_path / "run"
    fold_dir = out_dir / "repeat_0" / "fold_0"
    fold_dir.mkdir(parents=True)
    os.symlink("/dev/full", fold_dir / "tmp_test_embeddings.npz")
    out = _cli(*TINY, "--max_epochs=2", "--folds=2", f"--output_dir={out_dir}")
    assert out.returncode == faults.WRITE_FAILED, out.stderr[-3000:]
    line = _last_error(out.stderr)
    assert "No space left on device" in line
    assert "checkpoint of epoch 2 of repeat_0/fold_0 kept" in line
    assert "rerun the same command to resume" in line
    verbose = _cli(*TINY, "--max_epochs=2", "--folds=2", f"--output_dir={out_dir}",
                   "--verbose_errors")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    os.remove(fold_dir / "tmp_test_embeddings.npz")  # space again: the same command finishes
    again = _cli(*TINY, "--max_epochs=2", "--folds=2", f"--output_dir={out_dir}")
    assert again.returncode == 0 and (out_dir / "COMPLETE").exists(), again.stderr[-3000:]


@pytest.mark.slow
def test_divergence_then_the_corrected_command_in_the_same_folder(tmp_path):
    """Cases 4 and 5: --learning_rate=1e10 collapses (exit 4, one line naming the way out);
    the corrected command restarts the folder, which no fold had finished."""
    out_dir = tmp_path / "run"
    diverged = _cli(*TINY, "--max_epochs=2", "--learning_rate=1e10", f"--output_dir={out_dir}")
    assert diverged.returncode == faults.DIVERGED, diverged.stderr[-3000:]
    line = _last_error(diverged.stderr)
    assert line.startswith("error: training diverged: ")
    assert "rerun with a lower --learning_rate into the same --output_dir" in line
    fixed = _cli(*TINY, "--max_epochs=2", f"--output_dir={out_dir}")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "starting over with the new settings" in fixed.stderr
    previous = json.load(open(out_dir / "config.prev.json"))
    assert previous["optimizer"]["learning_rate"] == 1e10
    assert json.load(open(out_dir / "config.json"))["optimizer"]["learning_rate"] == 1e-3
    assert (out_dir / "previous_run" / "repeat_0").is_dir() and (out_dir / "COMPLETE").exists()


@pytest.mark.slow
def test_ctrl_c_keeps_the_checkpoint_and_resumes(tmp_path):
    out_dir = tmp_path / "run"
    args = [*TINY, "--max_epochs=400", "--folds=2", "--patience=400", "--ccp_patience=400",
            f"--output_dir={out_dir}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # pytest-xdist's workers ignore SIGINT, and a child inherits an ignored signal (Python then
    # installs no KeyboardInterrupt handler): give the run the default disposition, a terminal's.
    process = subprocess.Popen([sys.executable, RUN, *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    index = out_dir / "repeat_0" / "fold_0" / "checkpoints" / "checkpoint"
    deadline = time.monotonic() + 240
    while not index.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == faults.INTERRUPTED, stderr[-3000:]
    line = _last_error(stderr)
    assert line.startswith("error: interrupted (Ctrl-C); checkpoint of epoch ")
    assert "of repeat_0/fold_0 kept" in line and "rerun the same command to resume" in line
    assert not (out_dir / run_folder.LOCK_FILE).exists()  # the folder is free again


# --- case 3: corrupt run-folder files ---------------------------------------------------------
def test_a_truncated_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    import tensorflow as tf
    from ccp.training import checkpointing

    variable = tf.Variable(tf.zeros([256]))
    folder = str(tmp_path / "checkpoints")
    saver = checkpointing.Checkpointing({"v": variable}, folder, tf.distribute.get_strategy())
    for epoch in (1, 2, 3):
        variable.assign(tf.fill([256], float(epoch)))
        saver.save(epoch)
    damaged = os.path.join(folder, "ckpt-3.data-00000-of-00001")
    data = open(damaged, "rb").read()
    open(damaged, "wb").write(data[:len(data) // 2])  # the "Read less bytes"
    variable.assign(tf.zeros([256]))
    restorer = checkpointing.Checkpointing({"v": variable}, folder, tf.distribute.get_strategy())
    assert restorer.restore() == os.path.join(folder, "ckpt-2")
    np.testing.assert_array_equal(variable.numpy(), np.full([256], 2.0))
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "checkpoint " + os.path.join(folder, "ckpt-3") + " is damaged" in warned
    index = os.path.join(folder, "ckpt-2.index")  # both kept checkpoints damaged
    open(index, "wb").write(open(index, "rb").read()[:10])
    with pytest.raises(checkpointing.DamagedCheckpointError,
                       match=f"every checkpoint in {folder} is damaged .*ckpt-2") as raised:
        restorer.restore()
    status, message = faults.describe(raised.value, str(tmp_path))
    assert status == faults.USAGE_ERROR and "delete that folder" in message


@pytest.mark.slow
def test_a_run_resumes_past_a_truncated_checkpoint(tmp_path, caplog):
    """The issue's case through the runner: the unfinished fold's latest checkpoint truncated
    (the results of fold 1 lost, as if killed while it wrote them); the rerun warns, naming the
    file, resumes from the checkpoint before it and finishes the folder."""
    config = _digits(tmp_path, max_epochs=3, patience=10, ccp_patience=10)
    protocol.run(config)
    fold_dir = os.path.join(config.run.output_dir, "repeat_0", "fold_1")
    os.remove(os.path.join(fold_dir, "fold_result.json"))
    damaged = os.path.join(fold_dir, "checkpoints", "ckpt-3.data-00000-of-00001")
    data = open(damaged, "rb").read()
    open(damaged, "wb").write(data[:len(data) // 3])
    caplog.set_level("INFO")
    protocol.run(config)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"checkpoint {os.path.join(fold_dir, 'checkpoints', 'ckpt-3')} is "
                            "damaged (IndexError") for m in messages), messages
    assert any("resumed at epoch 2" in m for m in messages), messages
    assert run_folder.completed(config.run.output_dir)
    stored = json.load(open(os.path.join(fold_dir, "fold_result.json")))
    assert stored["training"]["epochs"] == 3
    # A damaged results.json of a complete folder is written again from the stored folds.
    results_path = os.path.join(config.run.output_dir, "results.json")
    expected = json.load(open(results_path))
    weights = os.path.join(fold_dir, "model.weights.h5")
    trained_at = os.path.getmtime(weights)
    open(results_path, "w").write("{\"per_fo")  # truncated
    caplog.clear()
    protocol.run(config)
    assert any(r.getMessage().startswith(f"{results_path} is damaged") for r in caplog.records)
    assert json.load(open(results_path))["average"] == expected["average"]
    assert os.path.getmtime(weights) == trained_at and run_folder.completed(config.run.output_dir)
    # A truncated test_embeddings.npz of a finished fold (results.json lost too, so the folder
    # is incomplete): the fold is evaluated again from its last checkpoint, not retrained.
    fold_0 = os.path.join(config.run.output_dir, "repeat_0", "fold_0")
    before = json.load(open(os.path.join(fold_0, "fold_result.json")))
    arrays = os.path.join(fold_0, "test_embeddings.npz")
    open(arrays, "wb").write(open(arrays, "rb").read()[:100])
    os.remove(results_path)
    caplog.clear()
    protocol.run(config)
    assert any("the stored result of fold 0" in r.getMessage() and "is damaged" in r.getMessage()
               for r in caplog.records)
    after = json.load(open(os.path.join(fold_0, "fold_result.json")))
    assert after["training"]["epochs"] == before["training"]["epochs"]
    assert after["test_metrics"] == pytest.approx(before["test_metrics"])
    assert run_folder.completed(config.run.output_dir)


def test_a_damaged_config_json_names_the_file_and_the_way_out(tmp_path):
    config = config_lib.ExperimentConfig()
    run_folder.store_config(config.to_dict(), str(tmp_path))
    path = tmp_path / "config.json"
    path.write_text(path.read_text()[:100])  # truncated
    with pytest.raises(run_folder.RunFolderError) as raised:
        run_folder.check_config(config.to_dict(), str(tmp_path))
    message = str(raised.value)
    assert message.startswith(f"{path} is damaged (JSONDecodeError")
    assert "delete it and rerun" in message and "another --output_dir" in message


# --- case 5: a folder with no finished fold accepts new settings -------------------------------
def test_new_settings_restart_an_unfinished_folder_and_resume_flags_otherwise(tmp_path):
    folder = str(tmp_path)
    config = config_lib.ExperimentConfig()
    run_folder.store_config(config.to_dict(), folder)
    os.makedirs(tmp_path / "repeat_0" / "fold_0" / "checkpoints")
    changed = config.replace(learning_rate=0.5, seed=3, flip=False)
    defaults = config_lib.ExperimentConfig().to_dict()
    with pytest.raises(config_lib.ConfigError, match="to resume it, rerun with --flip "
                                                     "--learning_rate=1e-05 --seed=0"):
        run_folder.check_config(changed.to_dict(), folder, defaults)
    (tmp_path / "repeat_0" / "fold_0" / "fold_result.json").write_text("{}")
    with pytest.raises(config_lib.ConfigError, match="and 1 finished fold: to resume it"):
        run_folder.check_config(changed.to_dict(), folder, defaults, allow_restart=True)
    os.remove(tmp_path / "repeat_0" / "fold_0" / "fold_result.json")
    names = run_folder.check_config(changed.to_dict(), folder, defaults, allow_restart=True)
    assert names == ["flip", "learning_rate", "seed"]
    run_folder.restart(folder, names)
    assert sorted(os.listdir(folder)) == ["config.prev.json", "previous_run"]
    assert os.path.isdir(tmp_path / "previous_run" / "repeat_0" / "fold_0" / "checkpoints")


# --- case 6: the report shows the proxies in the space the loss uses ---------------------------
def _jsonl_series(tmp_path, accuracies, chance=1 / 101):
    """A hand-made logs/covering_radius.jsonl (the covering monitor's schema): raw radii that
    grow 10x per epoch, normalized radii that do not, a projection at epoch 2, a final record
    at the best epoch 3."""
    lines = []
    for epoch, accuracy in enumerate(accuracies, start=1):
        lines.append({"epoch": epoch, "point": "epoch", "projection": epoch == 2,
                      "mean": 0.1 * 10 ** epoch, "max": 0.3 * 10 ** epoch, "classes": 101,
                      "images": 2048, "normalized_mean": 0.5 / epoch,
                      "normalized_max": 0.9 / epoch, "nearest_proxy_accuracy": accuracy,
                      "chance": chance})
    lines.append(dict(lines[2], point="final", projection=False))
    path = tmp_path / "covering_radius.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return [json.loads(line) for line in path.read_text().splitlines()]


def _fold_log(name, series):
    epochs = [r["epoch"] for r in series if r["point"] == "epoch"]
    return {"name": name, "epochs": [{"epoch": e, "loss": 1.0} for e in epochs],
            "projections": [{"epoch": 2}], "covering_radius": series}


def test_report_plots_normalized_radius_and_nearest_proxy_accuracy(tmp_path):
    from experiments import report

    series = _jsonl_series(tmp_path, [0.02, 0.01, 0.01, 0.012])
    fig = report.covering_radius_figure([_fold_log("fold 0", series)])
    radius_ax, accuracy_ax = fig.axes
    mean = next(line for line in radius_ax.lines if line.get_label() == "fold 0 mean over classes")
    np.testing.assert_allclose(mean.get_ydata(), [0.5, 0.25, 0.5 / 3, 0.125])  # not raw
    assert "Lipschitz-normalized" in radius_ax.get_ylabel()
    accuracy = next(line for line in accuracy_ax.lines if line.get_label() == "fold 0")
    np.testing.assert_allclose(accuracy.get_ydata(), [2.0, 1.0, 1.0, 1.2])
    assert accuracy_ax.get_ylim() == (0, 100)
    assert [line.get_xdata()[0] for line in accuracy_ax.lines
            if line.get_linestyle() == ":"] == [2]  # the projection marked on both panels
    notes = report.proxy_placement_notes([_fold_log("fold 0", series)])
    assert len(notes) == 1
    assert "the proxies are not near their classes" in notes[0]
    assert "At the best epoch (3), only 1.0 %" in notes[0] and "(chance: 0.99 %)" in notes[0]
    table = report.radius_table([_fold_log("fold 0", series)])
    assert "| fold 0 | 1 | 0.2500 / 0.4500 | 0.1667 / 0.3000 | 1.0 % (0.99 %) | 2048 |" in table
    healthy = _jsonl_series(tmp_path, [0.6, 0.8, 0.9, 0.9])
    assert report.proxy_placement_notes([_fold_log("fold 1", healthy)]) == []


def test_report_md_says_when_the_proxies_are_astray(tmp_path):
    from experiments import report
    from experiments.results import Embedded, FoldResult

    series = _jsonl_series(tmp_path, [0.02, 0.01, 0.01, 0.012])
    config = flags_lib.parse_flagfile("digits.cfg").replace(output_dir=str(tmp_path),
                                                             tsne_points=0)
    labels = np.repeat(np.arange(3), 2)
    fold = FoldResult(repeat=0, fold=0, train_classes=101, val_classes=0,
                      test_metrics={"map_at_r": 0.1, "num_skipped_queries": 0.0},
                      training={"history": _fold_log("fold 0", series)["epochs"],
                                "projections": [{"epoch": 2}], "covering_radius": series},
                      seconds=1.0, query=Embedded(np.eye(6, 4, dtype=np.float32), labels))
    report.write_experiment_report(config, {"method": "C2-CCP", "dataset": "digits",
                                            "table": "| t |"}, [fold])
    text = (tmp_path / "report.md").read_text()
    assert "**fold 0: the proxies are not near their classes.**" in text
    assert (tmp_path / "covering_radius.png").stat().st_size > 10_000


# --- case 7 (plots): validation axis within 100 %, whole epochs -------------------------------
def test_training_curves_stay_within_100_percent_on_whole_epochs():
    from experiments import report

    logs = [{"name": "fold 0", "projections": [],
             "epochs": [{"epoch": 1, "loss": 0.5, "map_at_r": 0.98},
                        {"epoch": 2, "loss": 0.4, "map_at_r": 1.0}]}]
    fig = report.training_curves_figure(logs)
    loss_ax, map_ax = fig.axes
    assert map_ax.get_ylim()[1] <= 100.0
    for axis in (loss_ax, map_ax):
        ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)


# --- case 7: smaller ones ------------------------------------------------------------------------
def test_export_embed_says_how_many_files_it_skipped(tmp_path, capsys):
    import ccp
    from PIL import Image

    model = ccp.models.build_embedding_model("small_cnn", embedding_size=4, name="skip_count")
    export_dir = ccp.export.export_embedder(model, str(tmp_path / "export"))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    (images / "b.webp").write_bytes(b"RIFF....WEBP")
    (images / "notes.txt").write_text("not an image")
    assert ccp.export.main(["embed", "--model", str(export_dir), "--images", str(images),
                            "--out", str(tmp_path / "emb.npy")]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 file(s) that are not .jpg/.jpeg/.png" in captured.err
    assert "b.webp" in captured.err and "notes.txt" in captured.err
    assert captured.out.strip().endswith("skipped 2 file(s) that are not .jpg/.jpeg/.png")
    only_others = tmp_path / "others"
    only_others.mkdir()
    (only_others / "c.webp").write_bytes(b"RIFF")
    with pytest.raises(SystemExit):
        ccp.export.main(["embed", "--model", str(export_dir), "--images", str(only_others),
                         "--out", str(tmp_path / "none.npy")])
    assert "it holds 1 other file(s), e.g. c.webp" in capsys.readouterr().err


def test_ensembles_table_prints_counts_as_counts():
    from experiments import ensembles

    def metrics(map_at_r):
        return {"map_at_r": map_at_r, "num_queries": 36.0}

    evaluated = [{"repeats": [0, 0], "metrics": metrics(0.2)},
                 {"repeats": [1, 0], "metrics": metrics(0.3)}]
    summary = ensembles.summarize_ensembles(evaluated, metrics(0.2))
    table = ensembles.ensembles_table(summary, 8, 2, 2)
    assert "| num_queries | 36 ± 0 | 36 | 36 | 36 |" in table
    assert "| MAP@R | 25.00 ± 5.00 | 20.00 | 30.00 | 20.00 |" in table


def test_help_exits_with_status_0():
    out = _cli("--help")
    assert out.returncode == 0 and "--validation_classes" in out.stdout



def test_importing_from_the_parent_of_a_clone_named_ccp_loads_the_library(tmp_path):
    """A clone named ``ccp`` seen from its parent folder: ``import ccp`` finds the clone folder
    (an empty namespace package before: ``ccp.losses`` -> AttributeError); the root
    ``__init__.py`` loads the library in its place and says so."""
    os.symlink(ROOT, tmp_path / "ccp")
    out = subprocess.run([sys.executable, "-c", "import ccp; print(ccp.defaults.MAX_EPOCHS, "
                          "ccp.__file__)"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["10000", str(tmp_path / "ccp" / "ccp" / "__init__.py")]
    assert "'import ccp' found the repository folder" in out.stderr
    assert "loading the library from" in out.stderr
