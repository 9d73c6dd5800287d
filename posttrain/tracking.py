"""Experiment trackers (`run.report_to`): TensorBoard, Weights & Biases, MLflow and trackio.

Every stage's metrics already go to `metrics.jsonl`; a tracker gets the same rows as well, plus the
resolved config, eval tables and files such as the report. Each backend runs offline or locally
unless the user points it elsewhere with the library's own environment variable:

    tensorboard  <run_dir>/tensorboard                          (event files)
    wandb        <run_dir>/wandb/offline-run-*                  (WANDB_MODE overrides `offline`)
    mlflow       file store <store_dir>/mlruns                  (MLFLOW_TRACKING_URI overrides)
    trackio      sqlite in <store_dir>/trackio                  (TRACKIO_DIR overrides)

`store_dir` defaults to the run directory's parent, so the stages of a pipeline
(`<out>/sft`, `<out>/dpo`, ...) share one MLflow store and one trackio directory, `<out>`. A
resumed stage continues the run it started: the ids are kept in `<run_dir>/trackers.json`.

The libraries are optional (`pip install -e ".[trackers]"`) and imported only when a run opens one;
`check_report_to` finds a missing one when the config is read, before anything runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
# The module whose presence makes a tracker usable (mlflow-skinny installs `mlflow` too).
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
INSTALL_HINT = 'pip install -e ".[trackers]"'
STATE_FILE = "trackers.json"
DEFAULT_PROJECT = "posttrain"  # W&B project; MLflow experiment and trackio project without a group

Table = tuple[list[str], list[list[Any]]]


def check_report_to(names: Iterable[str]) -> None:
    """Unknown names, and known ones whose library is missing, stop here with one line."""
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"run.report_to: unknown tracker {name!r}; valid: {', '.join(TRACKERS)}")
        module = MODULES[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"run.report_to: {name} needs the '{module}' package, which is not installed: "
                             f"{INSTALL_HINT}")


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row. `MetricsLogger` writes non-finite values as strings
    ('nan'), and rows may carry text or lists; trackers get only what they can plot."""
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalars
            value = value.item()
        if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
            out[key] = float(value)
    return out


def wide_table(rows: dict[str, dict[str, Any]], key: str) -> Table:
    """{row label: {column: value}} -> (columns, rows): one row per label, the union of columns in
    first-seen order, None where a row has no value (each model is scored on its own tasks)."""
    columns: list[str] = []
    for values in rows.values():
        columns += [c for c in values if c not in columns]
    return [key] + columns, [[label] + [values.get(c) for c in columns] for label, values in rows.items()]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": value}: MLflow params and TensorBoard text are flat."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cell = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


# ------------------------------------------------------------------------------------ backends

class Tracker:
    """One backend's run. `where` says where it writes (printed once when the run opens)."""

    kind = ""
    where = ""

    def log_config(self, config: dict[str, Any]) -> None: ...

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path, name: str | None = None) -> None: ...

    def finish(self) -> None: ...

    def state(self) -> dict[str, Any]:
        """What `trackers.json` keeps so that a resumed stage continues this run."""
        return {}


TEXT_SUFFIXES = (".md", ".txt", ".yaml", ".yml", ".json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class TensorBoardTracker(Tracker):
    kind = "tensorboard"

    def __init__(self, run_dir: Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.where = str(run_dir / "tensorboard")
        # On resume, TensorBoard hides what the first attempt logged after the checkpoint.
        self.writer = SummaryWriter(self.where, purge_step=start_step + 1 if start_step else None)

    def log_config(self, config):
        text = "\n".join(f"    {k}: {v}" for k, v in flatten(config).items())  # indented: a code block
        self.writer.add_text("config", text, 0)

    def log_metrics(self, step, metrics):
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_table(self, name, columns, rows, step=None):
        self.writer.add_text(name, _markdown(columns, rows), step or 0)

    def log_artifact(self, path, name=None):
        # TensorBoard has no file store: text files show as text, images as images, others not at all.
        tag = f"files/{name or path.name}"
        if path.suffix in TEXT_SUFFIXES and path.stat().st_size <= 1 << 20:
            self.writer.add_text(tag, path.read_text(encoding="utf-8", errors="replace"), 0)
        elif path.suffix in IMAGE_SUFFIXES:
            import numpy as np
            from PIL import Image

            with Image.open(path) as img:
                self.writer.add_image(tag, np.asarray(img.convert("RGB")), 0, dataformats="HWC")

    def finish(self):
        self.writer.close()


class WandbTracker(Tracker):
    kind = "wandb"

    def __init__(self, run_dir: Path, name: str, group: str | None, job_type: str, previous: dict):
        import wandb

        self.run_id = previous.get("id") or uuid.uuid4().hex[:12]
        mode = None if os.environ.get("WANDB_MODE") else "offline"  # the user's WANDB_MODE wins
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, dir=str(run_dir),
                              id=self.run_id, resume="allow", name=name, group=group, job_type=job_type,
                              mode=mode, reinit="create_new")
        self.where = str(run_dir / "wandb") + f" ({mode or os.environ['WANDB_MODE']})"

    def log_config(self, config):
        self.run.config.update(config, allow_val_change=True)  # a resumed run may change e.g. run.resume

    def log_metrics(self, step, metrics):
        self.run.log(metrics, step=step)

    def log_table(self, name, columns, rows, step=None):
        import wandb

        self.run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])},
                     **({"step": step} if step is not None else {}))

    def log_artifact(self, path, name=None):
        # run.save keeps the file's path below base_path: name "plots/x.png" -> files/plots/x.png.
        base = path.parent
        if name and Path(name).parts[-1] == path.name and path.as_posix().endswith(Path(name).as_posix()):
            base = path.parents[len(Path(name).parts) - 1]
        self.run.save(str(path), base_path=str(base), policy="now")

    def finish(self):
        self.run.finish()

    def state(self):
        return {"id": self.run_id}


_MLFLOW_BAD = re.compile(r"[^/\w.\- :]")  # what MLflow accepts in metric and param names


def _mlflow_key(key: str) -> str:
    return re.sub(r"/+", "/", _MLFLOW_BAD.sub("_", key)).strip("/") or "_"


class MlflowTracker(Tracker):
    kind = "mlflow"

    def __init__(self, store_dir: Path, name: str, group: str | None, job_type: str, previous: dict):
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (store_dir / "mlruns").resolve().as_uri()
            # MLflow 3 keeps the file store but refuses it unless asked (it prefers sqlite, which
            # mlflow-skinny cannot open without SQLAlchemy); our default store is one, so we ask.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client, self.where = MlflowClient(uri), uri
        self.run_id = previous.get("run_id") if previous.get("tracking_uri") == uri else None
        if self.run_id and not self._exists(self.run_id):
            self.run_id = None
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = group or DEFAULT_PROJECT
            found = self.client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
            tags = {"posttrain.job_type": job_type} | ({"posttrain.group": group} if group else {})
            self.run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        self._params = set(self.client.get_run(self.run_id).data.params)

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:  # MlflowException: the store was moved or cleared
            return False

    def log_config(self, config):
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        # Params cannot change once logged: a resumed run keeps the first values (the whole config
        # of each attempt is the config.json artefact, overwritten).
        params = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in flatten(config).items()}
        new = [Param(_mlflow_key(k), v[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()
               if _mlflow_key(k) not in self._params]
        for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i:i + MAX_PARAMS_TAGS_PER_BATCH])
        self._params |= {p.key for p in new}
        self.client.log_dict(self.run_id, config, "config.json")

    def log_metrics(self, step, metrics):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_mlflow_key(k), v, now, step) for k, v in metrics.items()])

    def log_table(self, name, columns, rows, step=None):
        # MLflow's own table format (pandas "split"), which its UI renders: {"columns", "data"}.
        self.client.log_dict(self.run_id, {"columns": list(columns), "data": [list(r) for r in rows]},
                             f"tables/{_mlflow_key(name).replace('/', '_')}.json")

    def log_artifact(self, path, name=None):
        folder = str(Path(name).parent) if name and Path(name).parent != Path(".") else None
        self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self):
        self.client.set_terminated(self.run_id)

    def state(self):
        return {"run_id": self.run_id, "tracking_uri": self.where}


_TRACKIO_NAME = re.compile(r"[^A-Za-z0-9._-]")  # what trackio accepts in artifact names


class TrackioTracker(Tracker):
    kind = "trackio"

    def __init__(self, store_dir: Path, name: str, group: str | None, resume: bool, config: dict | None):
        # trackio reads TRACKIO_DIR once, when it is first imported; later runs in the same process
        # write where the first one did (a pipeline's stages share the directory anyway).
        if "trackio" not in sys.modules and not os.environ.get("TRACKIO_DIR"):
            os.environ["TRACKIO_DIR"] = str((store_dir / "trackio").resolve())
        import trackio
        import trackio.utils

        self.where, self.name = str(trackio.utils.TRACKIO_DIR), name
        self.run = trackio.init(project=group or DEFAULT_PROJECT, name=name, group=group,
                                resume="allow" if resume else "never", embed=False, config=config)

    def log_config(self, config):
        import trackio.utils

        # trackio stores the config with the run's first logged row: init took it already; a later
        # call counts only before anything is logged.
        self.run.config.update(trackio.utils.to_json_safe(config))

    def log_metrics(self, step, metrics):
        self.run.log(metrics, step=step)

    def log_table(self, name, columns, rows, step=None):
        import trackio

        self.run.log({name: trackio.Table(columns=list(columns), data=[list(r) for r in rows])}, step=step)

    def log_artifact(self, path, name=None):
        # Artifact names are project-wide: the run's name keeps each stage's config.yaml apart.
        self.run.log_artifact(path, name=_TRACKIO_NAME.sub("_", f"{self.name}-{name or path.name}"), type="file")

    def finish(self):
        self.run.finish()


# ------------------------------------------------------------------------------------ fan-out

class Trackers(list):
    """The open trackers of one run; each call goes to every one. A tracker that fails while
    logging is reported once and dropped, so a full disk or a library bug does not end training."""

    def _each(self, method: str, *args, **kwargs) -> None:
        for tracker in list(self):
            try:
                getattr(tracker, method)(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any backend error: report, stop using it
                print(f"[trackers] {tracker.kind} failed in {method} ({type(e).__name__}: "
                      f"{' '.join(str(e).split())[:300]}); it logs nothing more in this run", flush=True)
                self.remove(tracker)

    def log_config(self, config: dict[str, Any]) -> None:
        self._each("log_config", config)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        clean = numeric(metrics)
        if clean:
            self._each("log_metrics", step, clean)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        self._each("log_table", name, columns, rows, step)

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        if Path(path).is_file():
            self._each("log_artifact", Path(path), name)

    def finish(self) -> None:
        self._each("finish")
        self.clear()


def _read_state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def open_trackers(report_to: Sequence[str], run_dir: str | Path, name: str | None = None,
                  group: str | None = None, config: dict[str, Any] | None = None, job_type: str = "train",
                  start_step: int = 0, resume: bool | None = None, store_dir: str | Path | None = None) -> Trackers:
    """Open one run in each tracker of `report_to` (duplicates count once) and log `config`.

    name: the run's name (default the run directory's name); group: ties runs together (W&B group,
    MLflow experiment, trackio project); resume: continue the runs recorded in
    `<run_dir>/trackers.json` (default: when start_step > 0)."""
    names = list(dict.fromkeys(report_to))
    check_report_to(names)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    store = Path(store_dir) if store_dir is not None else run_dir.resolve().parent
    name = name or run_dir.resolve().name
    resume = start_step > 0 if resume is None else resume
    previous = _read_state(run_dir) if resume else {}
    trackers = Trackers()
    try:
        for kind in names:
            if kind == "tensorboard":
                trackers.append(TensorBoardTracker(run_dir, start_step))
            elif kind == "wandb":
                trackers.append(WandbTracker(run_dir, name, group, job_type, previous.get("wandb", {})))
            elif kind == "mlflow":
                trackers.append(MlflowTracker(store, name, group, job_type, previous.get("mlflow", {})))
            elif kind == "trackio":
                trackers.append(TrackioTracker(store, name, group, resume, config))
    except BaseException:
        trackers.finish()  # the ones already open; the error itself is the user's to see
        raise
    state = {t.kind: t.state() for t in trackers if t.state()}
    if state:
        (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    if trackers:
        print("[trackers] " + "; ".join(f"{t.kind}: {t.where}" for t in trackers), flush=True)
    if config:
        trackers.log_config(config)
    return trackers
