"""aligndistil env: versions, devices and thread counts, for bug reports and sanity checks."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

import torch

from aligndistil_cli.config import StageConfig, option
from aligndistil_cli.models import cpu_bf16_native
from aligndistil_cli.runrecord import package_versions


@dataclass(frozen=True)
class EnvConfig(StageConfig):
    """Print the software and hardware aligndistil sees."""

    json_output: bool = option(False, "Print JSON instead of a table.", flag="--json")


def collect_env() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "versions": package_versions(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cuda_devices": devices,
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "cpu_bf16_native": cpu_bf16_native(),
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
    }
