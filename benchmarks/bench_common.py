"""What a benchmark's numbers were measured on, and how its results are written (JSON + Markdown side by side).

Shared by the scripts in ``benchmarks/``: ``machine()`` describes the CPU (and GPU when one is used) and the load
while measuring; ``write_results`` writes ``<name>.json`` and ``<name>.md`` under ``benchmarks/results/``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from longtail_seg.io_utils import atomic_write_json, atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where that is unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM: current and peak resident memory) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def machine(device: str | torch.device | None = None) -> dict[str, Any]:
    """CPU, cores this process may use, Python / torch versions, the 1-minute load average, and the GPU if
    ``device`` is a CUDA device."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine while measuring
    }
    if device is not None and torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["cuda"] = torch.version.cuda
    return info


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A GitHub Markdown table of ``rows`` (dicts), floats with 3 significant digits."""
    if not rows:
        return "(no rows)\n"
    columns = columns or list(rows[0])

    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(name: str, result: dict[str, Any], markdown: str, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``result`` as ``<name>.json`` and ``markdown`` (with the machine appended) as ``<name>.md``;
    returns the JSON path."""
    folder = Path(out_dir) if out_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / f"{name}.json", result, indent=2)
    described = ", ".join(f"{key} {value}" for key, value in result.get("machine", {}).items())
    atomic_write_text(folder / f"{name}.md", f"# {name}\n\n{markdown}\nMachine: {described}\n")
    return folder / f"{name}.json"
