"""llama-cpp-python build flags: exactly the ISA the CPU has, never AMX or -march=native; the cached wheel."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edgekit import llamacpp_build as build

ROOT = Path(__file__).parent.parent
BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"  # every x86-64 CPU of the last decade
AVX2 = f"{BASE} avx avx2 fma f16c bmi2"
AVX512 = "avx512f avx512cd avx512vl avx512dq avx512bw"
CPUS = {  # /proc/cpuinfo flags (abridged) -> the ggml options that must be ON; all others must be OFF
    "amd_zen3_no_avx512": (AVX2, {"GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2", "GGML_FMA", "GGML_F16C"}),
    "amd_zen4_avx512_without_avx_vnni": (
        f"{AVX2} {AVX512} avx512vbmi avx512_vnni avx512_bf16",
        {"GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2", "GGML_FMA", "GGML_F16C", "GGML_AVX512",
         "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"}),
    "intel_sapphire_rapids_advertising_amx": (
        f"{AVX2} {AVX512} avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8 avx512_fp16",
        {"GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2", "GGML_FMA", "GGML_F16C", "GGML_AVX_VNNI",
         "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"}),
    "intel_alder_lake_avx_vnni_no_avx512": (f"{AVX2} avx_vnni", {"GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2",
                                                                  "GGML_FMA", "GGML_F16C", "GGML_AVX_VNNI"}),
    # AVX-512F without BW/DQ/VL (Knights Landing): ggml's GGML_AVX512 would compile all five
    "avx512f_only": (f"{AVX2} avx512f avx512cd avx512_vnni", {"GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2",
                                                              "GGML_FMA", "GGML_F16C"}),
    # no AVX at all: ggml turns SSE4.2..F16C ON by default without GGML_NATIVE, so each must be switched off
    "sse_only_no_avx": (BASE, {"GGML_SSE42"}),
}


@pytest.mark.parametrize("cpu", CPUS)
def test_isa_options_are_exactly_what_the_cpu_has(cpu):
    flags, expected_on = CPUS[cpu]
    options = build.cmake_options(set(flags.split()))
    assert {name for name in build.ISA_OPTIONS if options[name]} == expected_on
    assert set(build.ISA_OPTIONS) <= set(options)  # every ISA option is set explicitly, ON or OFF


@pytest.mark.parametrize("cpu", CPUS)
def test_native_and_amx_are_always_off_on_x86(cpu):
    args = build.cmake_args(build.cmake_options(set(CPUS[cpu][0].split())))
    assert "-DGGML_NATIVE=OFF" in args
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(args)
    assert not [a for a in args if "AMX" in a and a.endswith("=ON")]


def test_what_the_binding_does_not_load_is_not_built():
    args = build.cmake_args(build.cmake_options(set(AVX2.split())))
    for name in ("LLAMA_BUILD_TOOLS", "LLAMA_BUILD_EXAMPLES", "LLAMA_BUILD_TESTS", "LLAMA_BUILD_SERVER",
                 "LLAMA_CURL", "LLAVA_BUILD"):
        assert f"-D{name}=OFF" in args


def test_arm_builds_native_with_no_x86_options():
    options = build.cmake_options({"fp", "asimd", "sve"}, machine="aarch64")
    assert options["GGML_NATIVE"] is True
    assert not set(options) & (set(build.ISA_OPTIONS) | {"GGML_AMX_TILE"})
    assert options["LLAVA_BUILD"] is False


def test_cpu_flags_are_read_from_the_first_processor_of_cpuinfo():
    text = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 amx_tile\n\n"
            "processor\t: 1\nflags\t\t: fpu\n")
    assert build.cpu_flags(text) == {"fpu", "avx2", "amx_tile"}
    assert build.cpu_flags("processor : 0\nFeatures : fp asimd\n") == {"fp", "asimd"}
    assert build.cpu_flags("") == set()


def test_cli_prints_cmake_args_for_this_machine():
    out = subprocess.run([sys.executable, "-m", "edgekit.llamacpp_build"], capture_output=True, text=True, check=True)
    args = out.stdout.split()
    assert args == build.cmake_args(build.cmake_options(*build.this_machine()))
    assert all(re.fullmatch(r"-D[A-Z0-9_]+=(ON|OFF)", a) for a in args)
    assert not [a for a in args if "AMX" in a and a.endswith("=ON")]


def test_pinned_version_is_the_extra_in_pyproject():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["llamacpp"]
    assert extra == [f"llama-cpp-python=={build.pinned_version()}"]


def test_cache_key_changes_with_version_and_flags():
    args = build.cmake_args(build.cmake_options(set(AVX2.split())))
    key = build.cache_key("0.3.36", args)
    assert key == build.cache_key("0.3.36", list(args)) and key.startswith("llama-cpp-python-0.3.36-")
    assert key != build.cache_key("0.3.37", args)
    assert key != build.cache_key("0.3.36", args[:-1] + ["-DLLAVA_BUILD=ON"])


def test_a_cached_wheel_counts_only_with_its_build_record(tmp_path):
    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"PK")
    assert build.cached_wheel(tmp_path) is None  # an interrupted copy: rebuild
    Path(str(wheel) + build.BUILD_RECORD).write_text("{}")
    assert build.cached_wheel(tmp_path) == wheel
    assert build.cached_wheel(tmp_path / "absent") is None


class _Dist:
    def __init__(self, files: dict):
        self.version, self.files = "0.3.36", files

    def read_text(self, name):
        return self.files.get(name)


def test_installed_build_reads_the_record_beside_the_installed_wheel(tmp_path, monkeypatch):
    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    record = {"version": "0.3.36", "cmake_args": ["-DGGML_NATIVE=OFF"], "cpu": "Some CPU"}
    Path(str(wheel) + build.BUILD_RECORD).write_text(json.dumps(record))
    direct_url = json.dumps({"url": wheel.as_uri(), "archive_info": {}})
    monkeypatch.setattr(build.metadata, "distribution", lambda name: _Dist({"direct_url.json": direct_url}))
    assert build.installed_build() == {**record, "wheel": str(wheel)}
    monkeypatch.setattr(build.metadata, "distribution", lambda name: _Dist({}))  # pip-built: no record
    assert build.installed_build() == {"version": "0.3.36", "cmake_args": None}


@pytest.mark.llamacpp
def test_installed_llama_cpp_runs_no_amx_code():
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "AVX" in info or "NEON" in info
    assert "AMX" not in info


def test_install_keeps_an_installed_build_with_the_same_flags(monkeypatch, tmp_path):
    args = build.cmake_args(build.cmake_options(*build.this_machine()))
    wheel = str(tmp_path / "w.whl")
    monkeypatch.setattr(build, "installed_build", lambda: {"version": build.pinned_version(), "cmake_args": args,
                                                           "wheel": wheel})
    monkeypatch.setattr(build, "_importable", lambda: True)
    monkeypatch.setattr(build.subprocess, "run", lambda *a, **k: pytest.fail("nothing to build or install"))
    assert build.install(tmp_path) == Path(wheel)


def _fake_pip(returncode: int, writes_wheel: bool, seen: list):
    def run(cmd, env=None, **kwargs):
        seen.append((cmd, env["CMAKE_ARGS"]))
        if writes_wheel:
            out = Path(cmd[cmd.index("-w") + 1])
            (out / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl").write_bytes(b"PK")
        return subprocess.CompletedProcess(cmd, returncode)
    return run


def test_a_built_wheel_lands_in_its_cache_folder_with_its_record(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(build.subprocess, "run", _fake_pip(0, True, seen))
    args = ["-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON"]
    folder = tmp_path / build.cache_key("0.3.36", args)
    wheel = build.build_wheel("0.3.36", args, folder)
    assert wheel.parent == folder and build.cached_wheel(folder) == wheel
    record = json.loads(Path(str(wheel) + build.BUILD_RECORD).read_text())
    assert record["cmake_args"] == args and record["version"] == "0.3.36" and record["cpu"]
    cmd, cmake = seen[0]
    assert cmake == "-DGGML_NATIVE=OFF -DGGML_AVX2=ON" and "llama-cpp-python==0.3.36" in cmd
    assert "--no-cache-dir" in cmd  # pip's cache is keyed by the sdist alone: it would return other flags' wheel
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left


@pytest.mark.parametrize("returncode, writes_wheel", [(1, False), (0, False)])
def test_a_failed_build_says_so_and_caches_nothing(tmp_path, monkeypatch, returncode, writes_wheel):
    monkeypatch.setattr(build.subprocess, "run", _fake_pip(returncode, writes_wheel, []))
    with pytest.raises(build.EdgekitError, match="building llama-cpp-python 0.3.36 failed.*CMAKE_ARGS=-DGGML_NATIVE=OFF"):
        build.build_wheel("0.3.36", ["-DGGML_NATIVE=OFF"], tmp_path / "key")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_install_is_one_error_line_and_exit_1(monkeypatch, capsys):
    def fail(cache_dir):
        raise build.EdgekitError("building llama-cpp-python 0.3.36 failed (pip exited with 1)")

    monkeypatch.setattr(build, "install", fail)
    assert build.main(["install"]) == 1
    assert capsys.readouterr().err == "Error: building llama-cpp-python 0.3.36 failed (pip exited with 1)\n"
