"""Experiment trackers (`run.report_to`), each library for real in its offline/local mode: W&B
offline (the run's .wandb log read back), the MLflow file store and trackio's sqlite (read back
through their own APIs), TensorBoard event files (read by its event accumulator). Nothing here
touches the network: W&B is offline, telemetry is off, the Hub is offline."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import tiny_model
from posttrain.config import load_config
from posttrain.tracking import Tracker, Trackers, check_report_to, numeric, open_trackers, wide_table
from posttrain.train.metrics import MetricsLogger, read_metrics

OFFLINE_ENV = {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "MLFLOW_DISABLE_TELEMETRY": "true",
               "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
# Where the user would point a tracker elsewhere; the tests check our defaults, so none is set.
USER_ENV = ("WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE")


@pytest.fixture(autouse=True)
def offline_env(tmp_path):
    saved = dict(os.environ)
    for key in USER_ENV:
        os.environ.pop(key, None)
    os.environ.update(OFFLINE_ENV)
    # W&B keeps caches and settings under ~; keep them in the test's directory.
    for key in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        os.environ[key] = str(tmp_path / "wandb-home")
    os.environ.pop("WANDB_DIR")  # the run directory decides where a run goes
    yield
    os.environ.clear()  # also drops what the code set for itself (MLFLOW_ALLOW_FILE_STORE)
    os.environ.update(saved)


# ------------------------------------------------------------------------------------ config checks

def test_an_unknown_tracker_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown tracker 'neptune'; valid: tensorboard, wandb, mlflow, trackio$"):
        check_report_to(["mlflow", "neptune"])


def test_a_missing_library_is_one_line_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "wandb" else real(name, *a, **k))
    check_report_to(["tensorboard", "mlflow"])  # installed ones pass
    want = "run.report_to: wandb needs the 'wandb' package, which is not installed: pip install -e \".[trackers]\""
    with pytest.raises(ValueError) as e:
        check_report_to(["tensorboard", "wandb"])
    assert str(e.value) == want
    from posttrain.recipes.sft import SFTConfig  # and when a stage's config is read, before anything runs

    with pytest.raises(ValueError) as e:
        load_config(SFTConfig, None, ["data.paths=[a.jsonl]", "run.report_to=[wandb]"])
    assert str(e.value) == want


def test_numbers_only_and_wide_tables():
    row = {"step": 3, "loss": 0.5, "tokens": 7, "flag": True, "eval/x": "nan", "note": "text", "hist": [1, 2],
           "inf": float("inf")}
    assert numeric(row) == {"loss": 0.5, "tokens": 7.0, "flag": 1.0}
    cols, rows = wide_table({"base": {"gsm8k/acc": 0.1}, "sft": {"gsm8k/acc": 0.3, "nll": 1.5}}, key="model")
    assert cols == ["model", "gsm8k/acc", "nll"]
    assert rows == [["base", 0.1, None], ["sft", 0.3, 1.5]]


def test_a_failing_tracker_is_reported_once_and_dropped(capsys):
    class Broken(Tracker):
        kind = "broken"

        def log_metrics(self, step, metrics):
            raise OSError("disk full\nsecond line")

    class Keeps(Tracker):
        kind = "keeps"
        seen: list = []

        def log_metrics(self, step, metrics):
            self.seen.append((step, metrics))

    keeps = Keeps()
    trackers = Trackers([Broken(), keeps])
    trackers.log_metrics(1, {"loss": 1.0, "x": "nan"})
    trackers.log_metrics(2, {"loss": 0.5})
    trackers.log_metrics(3, {"x": "nan"})  # nothing numeric: no call at all
    assert keeps.seen == [(1, {"loss": 1.0}), (2, {"loss": 0.5})]
    out = capsys.readouterr().out
    assert out.count("[trackers] broken failed in log_metrics (OSError: disk full second line)") == 1
    assert [t.kind for t in trackers] == ["keeps"]


# ------------------------------------------------------------------------------------ TensorBoard

def _tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _tb_texts(logdir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag.removesuffix("/text_summary") for tag in acc.Tags()["tensors"]}


def test_metrics_logger_keeps_jsonl_and_writes_one_tensorboard_run_that_resumes(tmp_path):
    pytest.importorskip("tensorboard")
    # The legacy flag and report_to together: one writer, not two.
    log = MetricsLogger(tmp_path, 3, tensorboard=True, report_to=["tensorboard"], progress=False,
                        config={"optim": {"lr": 0.001}})
    for step, loss in ((1, 2.0), (2, 1.5), (3, 1.25)):
        log.log(step, {"loss": loss, "odd": float("nan"), "lr": 0.001})
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text() == (
        '{"step": 1, "loss": 2.0, "odd": "nan", "lr": 0.001}\n'
        '{"step": 2, "loss": 1.5, "odd": "nan", "lr": 0.001}\n'
        '{"step": 3, "loss": 1.25, "odd": "nan", "lr": 0.001}\n')
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1

    # Resumed from a checkpoint at step 1: steps 2 and 3 are logged again with new values, and
    # TensorBoard, like metrics.jsonl, shows one curve.
    log = MetricsLogger(tmp_path, 3, start_step=1, tensorboard=True, progress=False)
    log.log(2, {"loss": 1.75})
    log.log(3, {"loss": 1.5})
    log.close()
    scalars = _tb_scalars(tmp_path / "tensorboard")
    assert "odd" not in scalars and "step" not in scalars
    assert scalars["loss"] == [(1, 2.0), (2, 1.75), (3, 1.5)]  # exact in float32
    assert [r["loss"] for r in read_metrics(tmp_path)] == [2.0, 1.75, 1.5]
    assert "config" in _tb_texts(tmp_path / "tensorboard")


def test_a_logger_without_trackers_opens_none(tmp_path):
    log = MetricsLogger(tmp_path, 1, progress=False)
    log.log(1, {"loss": 1.0})
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


# ------------------------------------------------------------------------------------ MLflow

def _mlflow_runs(store: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # reading a file store needs the same opt-in
    client = MlflowClient(store.resolve().as_uri())
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {store}"
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _mlflow_json(client, run_id: str, path: str):
    return json.loads(Path(client.download_artifacts(run_id, path)).read_text())


def test_mlflow_file_store_run_resumes_in_place(tmp_path):
    pytest.importorskip("mlflow")
    run_dir = tmp_path / "exp" / "sft"
    t = open_trackers(["mlflow"], run_dir, name="g/sft", group="g", job_type="sft",
                      config={"optim": {"lr": 0.001}, "run": {"resume": False}, "data": {"paths": ["a.jsonl"]}})
    t.log_metrics(1, {"loss": 2.0, "eval/acc": "nan", "eval/gsm8k:strict (x)": 0.25})
    t.log_metrics(2, {"loss": 1.0})
    t.log_table("eval/results", ["task", "acc"], [["gsm8k", 0.25]])
    (run_dir / "report.md").write_text("# report\n")
    t.log_artifact(run_dir / "report.md")
    t.finish()

    resumed = open_trackers(["mlflow"], run_dir, name="g/sft", group="g", job_type="sft", start_step=2,
                            config={"optim": {"lr": 0.001}, "run": {"resume": True}})
    resumed.log_metrics(3, {"loss": 0.5})
    resumed.finish()

    client, runs = _mlflow_runs(tmp_path / "exp" / "mlruns", "g")  # the parent of the run dir holds the store
    assert len(runs) == 1  # the resumed stage continued its run
    run = runs[0]
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run.info.run_id
    assert run.info.run_name == "g/sft" and run.info.status == "FINISHED"
    assert run.data.tags["posttrain.group"] == "g" and run.data.tags["posttrain.job_type"] == "sft"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == \
        [(1, 2.0), (2, 1.0), (3, 0.5)]
    assert "eval/acc" not in run.data.metrics  # the 'nan' string was skipped
    assert run.data.metrics["eval/gsm8k:strict _x_"] == 0.25  # parentheses are not allowed in MLflow names
    # Params keep their first values; the config artefact is the latest attempt's.
    assert run.data.params == {"optim.lr": "0.001", "run.resume": "false", "data.paths": '["a.jsonl"]'}
    assert _mlflow_json(client, run.info.run_id, "config.json")["run"] == {"resume": True}
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["config.json", "report.md", "tables"]
    assert _mlflow_json(client, run.info.run_id, "tables/eval_results.json") == \
        {"columns": ["task", "acc"], "data": [["gsm8k", 0.25]]}

    again = open_trackers(["mlflow"], run_dir, name="g/sft", group="g")  # start_step 0: a fresh run
    again.finish()
    assert len(_mlflow_runs(tmp_path / "exp" / "mlruns", "g")[1]) == 2


# ------------------------------------------------------------------------------------ W&B

def _wandb_records(path: Path):
    """The protobuf records of a .wandb file: a 7-byte header (':W&B', magic, version), then a
    LevelDB-style log of 32 KiB blocks whose chunks are (crc32, length, type) + data."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, block = path.read_bytes(), 7, b"", 32768
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too small for a chunk header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL or LAST: a record is complete
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def _wandb_complete(path: Path, timeout_s: float = 30.0) -> Path:
    """W&B's service process writes the .wandb file on its own and flushes it after `finish()`
    returns; the file is complete once it ends with the run's exit record."""
    deadline = time.time() + timeout_s
    while True:
        try:
            if any(r.WhichOneof("record_type") == "exit" for r in _wandb_records(path)):
                return path
        except Exception:  # noqa: BLE001 - a record still being written does not parse yet
            pass
        assert time.time() < deadline, f"{path} has no exit record after {timeout_s:.0f} s"
        time.sleep(0.1)


def _wandb_history(path: Path) -> list[dict]:
    rows = []
    for r in _wandb_records(_wandb_complete(path)):
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def test_wandb_offline_run_holds_the_history_config_and_files(tmp_path):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "exp" / "sft"
    t = open_trackers(["wandb"], run_dir, name="g/sft", group="g", job_type="sft",
                      config={"optim": {"lr": 0.001}})
    t.log_metrics(1, {"loss": 2.0, "eval/acc": "nan"})
    t.log_metrics(2, {"loss": 1.0, "eval/acc": 0.5})
    t.log_table("eval/results", ["task", "acc"], [["gsm8k", 0.5]], step=2)
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "loss.txt").write_text("x\n")
    t.log_artifact(run_dir / "plots" / "loss.txt", name="plots/loss.txt")
    t.finish()

    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"]
    [offline] = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))  # offline, under the run dir
    history = _wandb_history(offline / f"run-{run_id}.wandb")
    assert [(h["_step"], h.get("loss"), h.get("eval/acc")) for h in history] == [(1, 2.0, None), (2, 1.0, 0.5)]
    assert history[1]["eval/results/_type"] == "table-file"
    [run] = [r.run for r in _wandb_records(offline / f"run-{run_id}.wandb") if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.job_type, run.display_name, run.project) == ("g", "sft", "g/sft", "posttrain")
    config = {}
    for r in _wandb_records(offline / f"run-{run_id}.wandb"):
        if r.WhichOneof("record_type") in ("run", "config"):
            cfg = r.run.config if r.WhichOneof("record_type") == "run" else r.config
            config.update({u.key: json.loads(u.value_json) for u in cfg.update})
    assert config["optim"] == {"lr": 0.001}
    assert (offline / "files" / "plots" / "loss.txt").read_text() == "x\n"

    resumed = open_trackers(["wandb"], run_dir, name="g/sft", group="g", job_type="sft", start_step=2)
    resumed.log_metrics(3, {"loss": 0.5})
    resumed.finish()
    attempts = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))  # same id: `wandb sync` joins them
    assert len(attempts) == 2
    assert [h["loss"] for h in _wandb_history(attempts[-1] / f"run-{run_id}.wandb") if "loss" in h] == [0.5]


# ------------------------------------------------------------------------------------ trackio

def test_trackio_local_store_under_the_run_tree_and_resume(tmp_path):
    if importlib.util.find_spec("trackio") is None:  # not importorskip: importing would fix its directory
        pytest.skip("trackio is not installed")
    first_import = "trackio" not in sys.modules and not os.environ.get("TRACKIO_DIR")
    group = f"g{uuid.uuid4().hex[:8]}"  # trackio's directory is per process: a name no other test uses
    run_dir = tmp_path / "exp" / "sft"
    t = open_trackers(["trackio"], run_dir, name=f"{group}/sft", group=group, config={"optim": {"lr": 0.001}})
    t.log_metrics(1, {"loss": 2.0, "eval/acc": "nan"})
    t.log_metrics(2, {"loss": 1.0})
    t.log_table("eval/results", ["task", "acc"], [["gsm8k", 0.5]], step=2)
    (run_dir / "report.md").write_text("# report\n")
    t.log_artifact(run_dir / "report.md")
    where = Path(t[0].where)
    t.finish()
    if first_import:  # trackio reads its directory once per process, when first imported
        assert where == (tmp_path / "exp" / "trackio").resolve()
    assert (where / f"{group}.db").is_file()

    resumed = open_trackers(["trackio"], run_dir, name=f"{group}/sft", group=group, start_step=2,
                            config={"optim": {"lr": 0.002}})
    resumed.log_metrics(3, {"loss": 0.5})
    resumed.finish()

    from trackio.sqlite_storage import SQLiteStorage

    assert SQLiteStorage.get_runs(group) == [f"{group}/sft"]  # resumed, not a second run
    logs = SQLiteStorage.get_logs(group, f"{group}/sft")
    assert [(r["step"], r["loss"]) for r in logs if "loss" in r] == [(1, 2.0), (2, 1.0), (3, 0.5)]
    assert not any("eval/acc" in r for r in logs)
    [table] = [r["eval/results"] for r in logs if "eval/results" in r]
    assert table["_value"] == [{"task": "gsm8k", "acc": 0.5}]
    config = SQLiteStorage.get_run_config(group, f"{group}/sft")
    assert config["optim"] == {"lr": 0.002} and config["_Group"] == group  # the latest attempt's
    assert f"{group}_sft-report.md" in [a["name"] for a in SQLiteStorage.list_artifacts(group)]


# ------------------------------------------------------------------------------------ stages

U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731


def test_pipeline_overrides_parse_onto_a_stage_config():
    from posttrain.recipes.pipeline import PipelineConfig, _tracker_overrides
    from posttrain.recipes.sft import SFTConfig

    assert _tracker_overrides(PipelineConfig(output_dir="runs/demo"), "sft") == []
    cfg = PipelineConfig(output_dir="runs/demo", report_to=["mlflow", "tensorboard"])
    assert _tracker_overrides(cfg, "dpo") == ['run.report_to=["mlflow", "tensorboard"]', 'run.run_group="demo"',
                                              'run.run_name="demo/dpo"']
    cfg.run_name = "2024"  # would be an int if passed bare
    stage = load_config(SFTConfig, None, ["data.paths=[a.jsonl]"] + _tracker_overrides(cfg, "sft"))
    assert (stage.run.report_to, stage.run.run_group, stage.run.run_name) == (["mlflow", "tensorboard"], "2024",
                                                                              "2024/sft")


def test_sft_stage_and_pipeline_report_land_in_one_mlflow_experiment(tmp_path, tokenizer):
    """`posttrain sft` with the overrides a pipeline gives it (TensorBoard + MLflow), then the
    pipeline's report run: both in the pipeline directory's store, one experiment."""
    pytest.importorskip("mlflow")
    import torch
    from PIL import Image

    from posttrain.recipes.pipeline import PipelineConfig, _track_report, _tracker_overrides
    from posttrain.recipes.sft import SFTConfig, main

    model_dir = tmp_path / "model"
    tiny_model("llama", seed=3).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [U(f"What is {a} plus {b}?"), A(f"It is {a + b}.")]}) + "\n"
                            for a in range(1, 4) for b in range(1, 4)))
    out = tmp_path / "demo"
    pcfg = PipelineConfig(output_dir=str(out), report_to=["tensorboard", "mlflow"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(load_config(SFTConfig, None, [
            f"model.name_or_path={model_dir}", f"data.paths=[{data}]", f"run.output_dir={out / 'sft'}",
            "run.progress=false", "train.batch_size=3", "train.micro_batch_tokens=64", "train.max_steps=3",
            "optim.lr=1e-3"] + _tracker_overrides(pcfg, "sft")))
    finally:
        torch.set_num_threads(threads)
    rows = read_metrics(out / "sft")
    assert [r["step"] for r in rows] == [1, 2, 3]

    client, runs = _mlflow_runs(out / "mlruns", "demo")
    [sft] = runs
    assert sft.info.run_name == "demo/sft" and sft.data.tags["posttrain.job_type"] == "sft"
    for key in ("loss", "lr", "grad_norm"):
        assert [(m.step, m.value) for m in client.get_metric_history(sft.info.run_id, key)] == \
            [(r["step"], r[key]) for r in rows], key
    assert sft.data.params["optim.lr"] == "0.001" and sft.data.params["run.run_group"] == "demo"
    assert {"config.yaml", "config.json"} <= {a.path for a in client.list_artifacts(sft.info.run_id)}
    tb = _tb_scalars(out / "sft" / "tensorboard")
    assert [s for s, _ in tb["loss"]] == [1, 2, 3]
    assert [v for _, v in tb["loss"]] == pytest.approx([r["loss"] for r in rows], rel=1e-6)

    # The report run: what `_write_report` left (written by hand here) and the eval table.
    (out / "report.md").write_text("# demo\n")
    (out / "report.html").write_text("<h1>demo</h1>\n")
    (out / "pipeline.yaml").write_text("name: demo\n")
    (out / "plots").mkdir()
    Image.new("RGB", (4, 3), (255, 0, 0)).save(out / "plots" / "sft.png")
    evals = {"base": {"gsm8k/accuracy": 0.1}, "sft": {"gsm8k/accuracy": 0.3, "chat_nll/nll": 1.5}}
    _track_report(out, pcfg, evals)
    client, runs = _mlflow_runs(out / "mlruns", "demo")
    assert [r.info.run_name for r in runs] == ["demo/sft", "demo/report"]
    report = runs[1]
    assert report.data.tags["posttrain.job_type"] == "report"
    assert report.data.metrics["eval/sft/gsm8k/accuracy"] == 0.3
    assert _mlflow_json(client, report.info.run_id, "tables/eval_results.json") == {
        "columns": ["model", "gsm8k/accuracy", "chat_nll/nll"], "data": [["base", 0.1, None], ["sft", 0.3, 1.5]]}
    files = {a.path for a in client.list_artifacts(report.info.run_id)} | \
        {a.path for a in client.list_artifacts(report.info.run_id, "plots")}
    assert {"report.md", "report.html", "pipeline.yaml", "plots/sft.png", "config.json"} <= files
    assert {"files/report.md", "files/plots/sft.png", "eval/results"} <= _tb_texts(out / "tensorboard") | \
        _tb_images(out / "tensorboard")

    _track_report(out, pcfg, evals)  # the report rendered again: the same run
    assert len(_mlflow_runs(out / "mlruns", "demo")[1]) == 2


def _tb_images(logdir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return set(acc.Tags()["images"])


def test_eval_stage_logs_its_table_and_summary(tmp_path):
    pytest.importorskip("mlflow")
    from posttrain.recipes.eval import EvalConfig, track

    out = tmp_path / "eval" / "tiny"
    out.mkdir(parents=True)
    (out / "summary.md").write_text("| task | accuracy |\n")
    (out / "config.yaml").write_text("model: tiny\n")
    cfg = load_config(EvalConfig, None, ["model=tiny", "tasks=[gsm8k,ifeval]", "report_to=[mlflow]"])
    summary = {"tasks": {"gsm8k": {"metrics": {"accuracy": 0.5, "n": 10, "note": "x"}},
                         "ifeval": {"metrics": {"prompt_strict": 0.25}}}}
    track(cfg, out, summary)
    track(cfg, out, summary)  # eval re-run on the same directory: the same tracker run
    client, runs = _mlflow_runs(tmp_path / "eval" / "mlruns", "posttrain")
    [run] = runs
    assert run.info.run_name == "tiny" and run.data.tags["posttrain.job_type"] == "eval"
    assert run.data.metrics == {"eval/gsm8k/accuracy": 0.5, "eval/gsm8k/n": 10.0, "eval/ifeval/prompt_strict": 0.25}
    assert _mlflow_json(client, run.info.run_id, "tables/eval_results.json") == {
        "columns": ["task", "accuracy", "n", "prompt_strict"],
        "data": [["gsm8k", 0.5, 10.0, None], ["ifeval", None, None, 0.25]]}
    assert {"summary.md", "config.yaml", "config.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
