"""Small helpers shared by the workflow scripts' command lines, and ``load_workflow_script`` to run a script in this
process (tests, benchmarks)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

# workflow_scripts/ of the checkout this package is imported from (absent from an installed wheel)
WORKFLOW_SCRIPTS = Path(__file__).resolve().parents[1] / "workflow_scripts"


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """A workflow script's parser: its module docstring as the help text, line breaks kept (the usage example)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_table_and_figure_outputs(parser: argparse.ArgumentParser) -> None:
    """``--out-csv`` and ``--out-png``: the table and its figure, what each analysis script writes."""
    parser.add_argument("--out-csv", required=True, help="CSV table to write")
    parser.add_argument("--out-png", required=True, help="PNG figure of the table to write")


@contextmanager
def exit_on(prefix: str, *errors: type[Exception]) -> Iterator[None]:
    """Turn ``errors`` raised inside into ``SystemExit("PREFIX: error")``: bad input ends the job with one line
    naming the script (and what ``prefix`` adds, e.g. the files), not a traceback."""
    try:
        yield
    except errors as error:
        raise SystemExit(f"{prefix}: {error}") from None


def load_workflow_script(name: str) -> ModuleType:
    """workflow_scripts/NAME.py as a module, to call its ``parse_args`` / ``main`` in this process."""
    path = WORKFLOW_SCRIPTS / f"{name}.py"
    if not path.is_file():
        scripts = sorted(p.stem for p in WORKFLOW_SCRIPTS.glob("*.py"))
        raise FileNotFoundError(f"workflow script {path} does not exist; name one of {scripts} (run from a checkout "
                                "of the repo: an installed package has no workflow_scripts/)")
    spec = importlib.util.spec_from_file_location(f"workflow_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_json_object(text: str, option: str) -> dict[str, Any]:
    """Parse a JSON-object command-line option (a config section), naming the option when it is malformed."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"{option}: not valid JSON ({error}): {text[:200]}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{option}: expected a JSON object, got {type(value).__name__}")
    return value


def add_training_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options train.py and retrain.py share: --run-cfg, --out-dir, --device, --threads."""
    parser.add_argument("--run-cfg", default="{}",
                        help="JSON object: how the run goes (num_workers, checkpoint_period, log_period, progress_bar, "
                             "tensorboard); kept apart from --train-cfg so that changing them reruns no job")
    parser.add_argument("--out-dir", required=True, help="folder for model_final.pth, metrics.csv, checkpoints/")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")


def training_config(config_class: Any, train_cfg: str, run_cfg: str = "{}") -> Any:
    """``--train-cfg`` (what decides the weights) and ``--run-cfg`` (how the run goes: ``config_class.RUN_SETTINGS``)
    as one checked ``TrainConfig`` / ``RetrainConfig``; a bad value exits naming its key."""
    run = parse_json_object(run_cfg, "--run-cfg")
    misplaced = sorted(set(run) - set(config_class.RUN_SETTINGS))
    if misplaced:
        raise SystemExit(f"--run-cfg takes only {list(config_class.RUN_SETTINGS)}; pass {misplaced} in --train-cfg")
    try:
        return config_class.from_dict({**parse_json_object(train_cfg, "--train-cfg"), **run})
    except ValueError as error:
        raise SystemExit(f"--train-cfg / --run-cfg: {error}") from None


def finish_training_run(result: Any, verb: str, seconds: float, rank: int) -> None:
    """Print a training run's summary on rank 0 and tear down the process group started by torchrun/srun."""
    import torch.distributed as dist

    if rank == 0:
        resumed = f", resumed from iteration {result.resumed_from_iteration}" if result.resumed_from_iteration else ""
        print(f"{verb} {result.iteration} iterations ({result.epoch} epochs) in {seconds:.0f}s{resumed} "
              f"-> {result.final_model}", flush=True)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
