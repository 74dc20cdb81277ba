"""GPU memory of this process from NVML (nvidia-ml-py), for CUDA profiles: never host RSS as GPU memory.

NVML is optional: without the package, a driver or a GPU, every reading is None with the reason why.
"""

from __future__ import annotations

import os
import threading
import time


def _nvml():
    """The initialised pynvml module, or the reason there is none."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no usable GPU
        return None, f"NVML unavailable: {exc}"
    return pynvml, None


def device_name(index: int = 0) -> str | None:
    nvml, _ = _nvml()
    if nvml is None:
        return None
    try:
        name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(index))
    except Exception:
        return None
    return name.decode() if isinstance(name, bytes) else name


class GpuPeak:
    """Samples this process's device memory (NVML's per-process figure) every 10 ms; `peak_mb` is the maximum.

    Per process, not the device total, so other programs on the GPU do not count; the sampling misses
    peaks shorter than its period.
    """

    def __init__(self, device_id: int = 0, period_s: float = 0.01):
        self.nvml, self.reason = _nvml()
        self.device_id, self.period_s, self.peak = device_id, period_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "GpuPeak":
        if self.nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _used_bytes(self) -> int:
        handle = self.nvml.nvmlDeviceGetHandleByIndex(self.device_id)
        procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        return sum(p.usedGpuMemory or 0 for p in procs if p.pid == os.getpid())

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._used_bytes())
            except Exception as exc:  # a driver that cannot tell per-process figures: say so, stop sampling
                self.reason = f"NVML could not read process memory: {exc}"
                return
            time.sleep(self.period_s)

    def fields(self) -> dict:
        """The row's GPU fields: the peak in MB, or null and the reason."""
        if self.nvml is None or (self.reason and not self.peak):
            return {"gpu_peak_mb": None, "gpu_peak_source": self.reason}
        return {"gpu_peak_mb": self.peak / 1e6, "gpu_peak_source": "NVML per-process used memory, sampled every "
                                                                   f"{self.period_s * 1000:g} ms"}
