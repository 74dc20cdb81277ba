"""Build llama-cpp-python for this CPU with flags that cannot crash it, cache the wheel, record the flags.

A default llama.cpp build uses `-march=native`, which on VMs that advertise AMX without enabling it
compiles AMX kernels that die with SIGILL. Here every ISA option is set explicitly from the CPU's flags
(/proc/cpuinfo), GGML_NATIVE and every AMX option are off, and parts the Python binding never loads
(tools, examples, tests, server, the multimodal library, HTTPS) are not built, which shortens the build.

    python -m edgekit.llamacpp_build            # prints CMAKE_ARGS for this machine
    python -m edgekit.llamacpp_build install    # build (or reuse the cached wheel) and pip install it

Every wheel lies in a cache folder keyed by version and flags, with `<wheel>.build.json` beside it (flags,
CPU, date); pip records the wheel's path in the installed package, so the runner finds the flags again.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from edgekit.errors import EdgekitError

DIST = "llama-cpp-python"
AVX512_BASE = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")  # what ggml's GGML_AVX512 compiles for
# ggml option -> the /proc/cpuinfo flags it needs (all of them). Without GGML_NATIVE, ggml turns SSE4.2,
# AVX, AVX2, BMI2, FMA and F16C on by default, so an option the CPU lacks must be switched off explicitly.
ISA_OPTIONS = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx", "avx2"),
    "GGML_BMI2": ("bmi2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_AVX_VNNI": ("avx2", "avx_vnni"),
    "GGML_AVX512": AVX512_BASE,
    "GGML_AVX512_VBMI": AVX512_BASE + ("avx512vbmi",),
    "GGML_AVX512_VNNI": AVX512_BASE + ("avx512_vnni",),
    "GGML_AVX512_BF16": AVX512_BASE + ("avx512_bf16",),
}
# always off: -march=native (it would enable AMX again) and AMX itself (advertised is not enabled)
NEVER = ("GGML_NATIVE", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
# what the Python binding does not load; llama-cpp-python forces LLAMA_BUILD_COMMON on and LLAMA_CURL off
NOT_NEEDED = ("LLAMA_BUILD_TESTS", "LLAMA_BUILD_TOOLS", "LLAMA_BUILD_EXAMPLES", "LLAMA_BUILD_SERVER",
              "LLAMA_CURL", "LLAMA_OPENSSL", "GGML_BUILD_TESTS", "GGML_BUILD_EXAMPLES", "LLAVA_BUILD")
BUILD_RECORD = ".build.json"  # suffix of the record beside each cached wheel


def cpu_flags(cpuinfo: str) -> set[str]:
    """The ISA flags of the first CPU in /proc/cpuinfo text (x86 `flags`, ARM `Features`)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cmake_options(flags: set[str], machine: str = "x86_64") -> dict[str, bool]:
    """Option -> ON/OFF. Off x86 there is no AMX to avoid: -march=native is then the fastest safe choice."""
    slim = {name: False for name in NOT_NEEDED}
    if machine.lower() not in ("x86_64", "amd64", "i686", "i386"):
        return {"GGML_NATIVE": True, **slim}
    isa = {name: set(needs) <= flags for name, needs in ISA_OPTIONS.items()}
    return {**{name: False for name in NEVER}, **isa, **slim}


def cmake_args(options: dict[str, bool]) -> list[str]:
    return [f"-D{name}={'ON' if on else 'OFF'}" for name, on in options.items()]


def this_machine() -> tuple[set[str], str]:
    """(CPU flags, machine) of the computer this runs on."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return cpu_flags(cpuinfo), platform.machine()


def pinned_version() -> str:
    """The llama-cpp-python version of edgekit's `llamacpp` extra (pyproject.toml is the one place it is set)."""
    from packaging.requirements import Requirement

    for text in metadata.requires("edgekit") or []:
        req = Requirement(text)
        if req.name == DIST and len(req.specifier) == 1:
            spec = next(iter(req.specifier))
            if spec.operator == "==":
                return spec.version
    raise EdgekitError(f"edgekit's `llamacpp` extra pins no {DIST} version (pyproject.toml)")


def cache_key(version: str, args: list[str]) -> str:
    digest = hashlib.sha256(" ".join(args).encode()).hexdigest()[:12]
    return f"{DIST}-{version}-{digest}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgekit" / "wheels"


def cached_wheel(folder: Path) -> Path | None:
    """The wheel in a cache folder, if a complete build (wheel + record) is there."""
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    return next((w for w in wheels if Path(str(w) + BUILD_RECORD).is_file()), None)


def build_wheel(version: str, args: list[str], folder: Path, log=sys.stderr) -> Path:
    """Compile llama-cpp-python into `folder` (minutes); the folder appears only once the build succeeded."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building-"))
    try:
        env = {**os.environ, "CMAKE_ARGS": " ".join(args)}
        # --no-cache-dir: pip's own wheel cache is keyed by the sdist alone and would hand back other flags' build
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", DIST, "--no-cache-dir",
               f"{DIST}=={version}", "-w", str(tmp)]
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        wheels = list(tmp.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise EdgekitError(f"building {DIST} {version} failed (pip exited with {proc.returncode}) with "
                               f"CMAKE_ARGS={' '.join(args)}: see the compiler output above")
        record = {"version": version, "cmake_args": args, "cpu": _cpu_name(), "machine": platform.machine(),
                  "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        Path(str(wheels[0]) + BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        tmp.rename(folder)  # atomic: a half-built folder is never taken for a cached wheel
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached_wheel(folder)


def install(cache_dir: Path | None = None, log=sys.stderr) -> Path:
    """Install llama-cpp-python built for this CPU: the cached wheel when present, else build and cache it."""
    version = pinned_version()
    args = cmake_args(cmake_options(*this_machine()))
    folder = (cache_dir or default_cache_dir()) / cache_key(version, args)
    wheel = cached_wheel(folder)
    installed = installed_build()
    if installed.get("version") == version and installed.get("cmake_args") == args and _importable():
        print(f"{DIST} {version} is installed with these flags ({installed.get('wheel')})", file=log, flush=True)
        return Path(installed["wheel"])
    if wheel is None:
        print(f"building {DIST} {version} (several minutes) with CMAKE_ARGS={' '.join(args)}", file=log, flush=True)
        shutil.rmtree(folder, ignore_errors=True)  # a folder without its record is no complete build
        wheel = build_wheel(version, args, folder, log)
    else:
        print(f"reusing {wheel}", file=log, flush=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)])
    deps = subprocess.run([sys.executable, "-m", "pip", "install", "-q", str(wheel)])  # its small pure-Python deps
    if proc.returncode or deps.returncode:
        raise EdgekitError(f"pip could not install {wheel}")
    if not _importable():
        raise EdgekitError(f"{wheel} installed, but `import llama_cpp` fails: rebuild it (remove {folder})")
    return wheel


def _importable() -> bool:
    """Whether llama_cpp imports and loads its library (in a fresh process: this one may predate the install)."""
    code = "import llama_cpp; llama_cpp.llama_print_system_info()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def installed_build() -> dict:
    """How the installed llama-cpp-python was built: its record when edgekit built it, else what is known."""
    try:
        dist = metadata.distribution("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return {}
    info = {"version": dist.version, "cmake_args": None}
    url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if url.startswith("file://") and url.endswith(".whl"):
        wheel = Path(unquote(urlparse(url).path))
        info["wheel"] = str(wheel)
        record = Path(str(wheel) + BUILD_RECORD)
        if record.is_file():
            info.update(json.loads(record.read_text()))
    return info


def _cpu_name() -> str:
    from edgekit.profiling import _cpu_name as name

    return name()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekit.llamacpp_build", description=__doc__.split("\n")[0])
    parser.add_argument("action", nargs="?", choices=["flags", "install"], default="flags",
                        help="flags: print CMAKE_ARGS for this CPU; install: build or reuse the wheel, install it")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"wheel cache [{default_cache_dir()}]")
    args = parser.parse_args(argv)
    try:
        if args.action == "flags":
            print(" ".join(cmake_args(cmake_options(*this_machine()))))
        else:
            print(install(args.cache_dir))
    except EdgekitError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
