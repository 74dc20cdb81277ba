"""Bad input, tried as a new user would (issue 8).

One table: every row is a command line, its exit code and what its error says. Usage errors read as click
shows them (usage, the --help hint, `Error: ...`; exit 2); every other error is one `Error: ...` line
(exit 1); bare `edgekit` prints help (exit 0). No row leaves a file under out/, and none says "internal
error". Then the cases a table cannot hold: signals during a save, stale temp files, sweeps whose points
fail.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli import edgekit

from edgekit.errors import ShapeError

OUT = "out/result"  # every failing command is pointed at files under out/: nothing may appear there
IS_ROOT = os.geteuid() == 0  # root writes into a read-only folder: those rows cannot fail as root


@dataclasses.dataclass(frozen=True)
class Bad:
    argv: list
    code: int
    says: tuple = ()  # substrings of the error line (of stdout for exit 0)
    needs_non_root: bool = False


def usage(*argv: str, says: str) -> Bad:
    return Bad(list(argv), 2, (says,))


def profile(*extra: str, model: str = "{w}/dense.onnx") -> list:
    return ["profile", model, "--seq-lens", "32", *extra]


ROWS = {
    # -- usage errors: what is wrong, the --help hint, exit 2 ---------------------------------------
    "bare_edgekit_prints_help": Bad([], 0, ("Usage: edgekit", "export", "profile")),
    "export_without_output": usage("export", "llama-tiny", says="Missing option '-o' / '--output'"),
    "export_budget_not_a_number": usage("export", "llama-tiny", "-o", f"{OUT}.onnx", "--budget-tokens", "abc",
                                        says="Invalid value for '--budget-tokens'"),
    "export_unknown_option": usage("export", "llama-tiny", "-o", f"{OUT}.onnx", "--budget", "9",
                                   says="No such option: --budget"),
    "unknown_command": usage("exprot", "llama-tiny", says="No such command 'exprot'"),
    "profile_repeat_not_a_number": usage(*profile("--repeat", "x"), says="Invalid value for '--repeat'"),
    "report_without_file": usage("report", says="Missing argument"),
    # -- export ---------------------------------------------------------------------------------------
    "export_unknown_model": Bad(["export", "llama-huge", "-o", f"{OUT}.onnx"], 1, ("unknown model 'llama-huge'",)),
    "export_missing_folder": Bad(["export", "no/such/folder", "-o", f"{OUT}.onnx"], 1, ("no/such/folder",)),
    "export_dense_with_dhsa_option": Bad(["export", "llama-tiny", "-o", f"{OUT}.onnx", "--budget-tokens", "64"], 1,
                                         ("--method dhsa",)),
    "export_unknown_architecture": Bad(["export", "{w}/gpt2-folder", "-o", f"{OUT}.onnx"], 1,
                                       ("GPT2LMHeadModel", "LlamaForCausalLM")),
    "export_budget0": Bad(["export", "llama-tiny", "-o", f"{OUT}.onnx", "--method", "dhsa", "--budget-tokens", "0"],
                          1, ("budget_tokens",)),
    "export_block0": Bad(["export", "llama-tiny", "-o", f"{OUT}.onnx", "--method", "dhsa", "--block-size", "0"], 1,
                         ("block_size",)),
    # -- export --format gguf: the dense LLM for llama.cpp ----------------------------------------------
    "export_unknown_format": Bad(["export", "llama-tiny", "-o", f"{OUT}.onnx", "--format", "tflite"], 1,
                                 ("unknown --format 'tflite'", "gguf")),
    "export_gguf_unknown_type": Bad(["export", "llama-tiny", "-o", f"{OUT}.gguf", "--format", "gguf", "--gguf-type",
                                     "q4_k"], 1, ("unknown --gguf-type 'q4_k'", "f32, f16, q8_0")),
    "export_gguf_type_without_gguf": Bad(["export", "llama-tiny", "-o", f"{OUT}.onnx", "--gguf-type", "f16"], 1,
                                         ("--gguf-type applies to --format gguf only",)),
    "export_gguf_vision_model": Bad(["export", "litv2-tiny", "-o", f"{OUT}.gguf", "--format", "gguf"], 1,
                                    ("decoder LLMs", "'litv2-tiny'", "image-classification")),
    "export_gguf_policy_model": Bad(["export", "embclip-tiny", "-o", f"{OUT}.gguf", "--format", "gguf"], 1,
                                    ("decoder LLMs", "'embclip-tiny'", "embodied-policy")),
    "export_gguf_vlm_model": Bad(["export", "llava-tiny", "-o", f"{OUT}.gguf", "--format", "gguf"], 1,
                                 ("decoder LLMs", "'llava-tiny'")),
    "export_gguf_with_dhsa": Bad(["export", "llama-tiny", "-o", f"{OUT}.gguf", "--format", "gguf", "--method", "dhsa"],
                                 1, ("dense model", "--method dhsa does not apply")),
    "export_gguf_with_op_options": Bad(["export", "llama-tiny", "-o", f"{OUT}.gguf", "--format", "gguf",
                                        "--budget-tokens", "64", "-O", "sink_tokens=8"], 1,
                                       ("--sink-tokens", "--budget-tokens", "do not apply")),
    "export_gguf_with_check_options": Bad(["export", "llama-tiny", "-o", f"{OUT}.gguf", "--format", "gguf", "--atol",
                                           "0.1", "--check-tokens", "8", "--logits-to-keep", "2", "--with-decode"], 1,
                                          ("--check-tokens, --logits-to-keep, --atol, --with-decode do not apply",)),
    "export_gguf_onto_a_directory": Bad(["export", "llama-tiny", "-o", "{w}", "--format", "gguf"], 1,
                                        ("it is a directory",)),
    # -- profile: inputs that cannot work are refused before the sweep, with the reason ----------------
    "profile_missing_file": Bad(profile("--json", f"{OUT}.json", model="{w}/missing.onnx"), 1, ("missing.onnx",)),
    "profile_corrupt_onnx": Bad(profile("--json", f"{OUT}.json", "--plot", f"{OUT}.png", model="{w}/corrupt.onnx"),
                                1, ("corrupt.onnx", "not a readable ONNX model")),
    "profile_text_file": Bad(profile("--json", f"{OUT}.json", model="{w}/notes.txt"), 1,
                             ("notes.txt", "expected an .onnx")),
    "profile_onnx_named_txt": Bad(profile("--json", f"{OUT}.json", model="{w}/model.txt"), 1,
                                  ("model.txt", "expected an .onnx")),
    "profile_not_an_edgekit_model": Bad(profile("--json", f"{OUT}.json", model="{w}/add.onnx"), 1,
                                        ("add.onnx", "not exported by edgekit")),
    "profile_gguf_without_llamacpp": Bad(profile("--json", f"{OUT}.json", model="{w}/fake.gguf"), 1,
                                         ("fake.gguf", "llama-cpp-python is not installed", "make setup-llamacpp")),
    "profile_sweep_without_gguf": Bad(profile("--llamacpp-sweep", "--json", f"{OUT}.json"), 1,
                                      ("--llamacpp-sweep tunes llama.cpp", "no model is a .gguf")),
    "profile_sweep_threads_zero": Bad(profile("--llamacpp-sweep", "--llamacpp-sweep-axis", "threads=0", "--json",
                                              f"{OUT}.json"), 1, ("bad threads values '0'",)),
    "profile_sweep_ubatch_above_batch": Bad(profile("--llamacpp-sweep", "--llamacpp-sweep-axis", "batch=512/2048"),
                                            1, ("bad batch values '512/2048'", "N_UBATCH <= N_BATCH")),
    "profile_sweep_unknown_kv_type": Bad(profile("--llamacpp-sweep", "--llamacpp-sweep-axis", "kv=q3"), 1,
                                         ("bad kv_type values 'q3'", "q8_0")),
    "profile_sweep_unknown_axis": Bad(profile("--llamacpp-sweep", "--llamacpp-sweep-axis", "speed=1"), 1,
                                      ("AXIS one of threads, batch, flash_attn, kv_type, mmap", "'speed=1'")),
    "profile_sweep_unknown_strategy": Bad(profile("--llamacpp-sweep", "--llamacpp-sweep-strategy", "random"), 1,
                                          ("unknown sweep strategy 'random'", "axes, grid")),
    "profile_sweep_at_zero": Bad(profile("--llamacpp-sweep", "--llamacpp-sweep-at", "0", "--json", f"{OUT}.json"), 1,
                                 ("sweep_at must be >= 1",)),
    "profile_sweep_at_without_sweep": Bad(profile("--llamacpp-sweep-at", "256"), 1, ("needs a llama.cpp sweep",)),
    "profile_sweep_axis_without_sweep": Bad(profile("--llamacpp-sweep-axis", "threads=1"), 1,
                                            ("need --llamacpp-sweep",)),
    "profile_unknown_ep": Bad(profile("--ep", "tpu", "--json", f"{OUT}.json"), 1, ("tpu", "cpu")),
    "profile_cuda_unavailable": Bad(profile("--ep", "cuda", "--json", f"{OUT}.json"), 1,
                                    ("CUDAExecutionProvider", "not available")),
    "profile_seq_len_zero": Bad(["profile", "{w}/dense.onnx", "--seq-lens", "0", "--json", f"{OUT}.json"], 1,
                                ("--seq-lens",)),
    "profile_seq_len_text": Bad(["profile", "{w}/dense.onnx", "--seq-lens", "abc", "--json", f"{OUT}.json"], 1,
                                ("--seq-lens", "abc")),
    # -- settings out of range ------------------------------------------------------------------------
    "profile_threads_negative": Bad(profile("--threads", "-3", "--json", f"{OUT}.json"), 1,
                                    ("threads must be >= 1", "-3")),
    "profile_repeat_zero": Bad(profile("--repeat", "0", "--json", f"{OUT}.json"), 1, ("repeat must be >= 1",)),
    "profile_warmup_negative": Bad(profile("--warmup", "-1", "--json", f"{OUT}.json"), 1, ("warmup must be >= 0",)),
    "profile_timeout_zero": Bad(profile("--timeout", "0", "--json", f"{OUT}.json"), 1, ("timeout must be > 0",)),
    "profile_memory_limit_negative": Bad(profile("--memory-limit-mb", "-5", "--json", f"{OUT}.json"), 1,
                                         ("memory_limit_mb must be > 0",)),
    "profile_breakdown_plot_without_breakdown": Bad(profile("--breakdown-plot", f"{OUT}.png"), 1,
                                                    ("--breakdown-plot", "add --breakdown")),
    "passkey_threads_negative": Bad(["passkey", "{w}/dense.onnx", "--threads", "-3", "--json", f"{OUT}.json"], 1,
                                    ("threads must be >= 1",)),
    # -- output paths are checked before any slow work ------------------------------------------------
    "export_onto_a_directory": Bad(["export", "llama-tiny", "-o", "{w}"], 1, ("it is a directory",)),
    "export_parent_is_a_file": Bad(["export", "llama-tiny", "-o", "{w}/notes.txt/m.onnx"], 1,
                                   ("notes.txt is a file, not a folder",)),
    "export_empty_output": Bad(["export", "llama-tiny", "-o", ""], 1, ("output path is empty",)),
    "export_read_only_folder": Bad(["export", "llama-tiny", "-o", "{w}/read-only/m.onnx"], 1, ("not writable",),
                                   needs_non_root=True),
    "profile_json_onto_a_directory": Bad(profile("--json", "{w}", "--plot", f"{OUT}.png"), 1, ("it is a directory",)),
    "profile_plot_parent_is_a_file": Bad(profile("--json", f"{OUT}.json", "--plot", "{w}/notes.txt/p.png"), 1,
                                         ("is a file, not a folder",)),
    "profile_json_empty": Bad(profile("--json", ""), 1, ("output path is empty",)),
    "profile_json_read_only_folder": Bad(profile("--json", "{w}/read-only/r.json"), 1, ("not writable",),
                                         needs_non_root=True),
    "report_plot_onto_a_directory": Bad(["report", "{w}/profile.json", "--plot", "{w}"], 1, ("it is a directory",)),
    "passkey_json_parent_is_a_file": Bad(["passkey", "{w}/dense.onnx", "--json", "{w}/notes.txt/k.json"], 1,
                                         ("is a file, not a folder",)),
    "demo_output_dir_is_a_file": Bad(["demo", "--output-dir", "{w}/notes.txt"], 1, ("is a file, not a folder",)),
    # -- report: results files of the wrong shape, named in one line ----------------------------------
    "report_not_json": Bad(["report", "{w}/not-json.txt", "--plot", f"{OUT}.png"], 1, ("not-json.txt",)),
    "report_binary_junk": Bad(["report", "{w}/junk.json", "--plot", f"{OUT}.png"], 1,
                              ("cannot read profile results", "junk.json")),
    "report_results_not_a_list": Bad(["report", "{w}/results-5.json"], 1, ("results-5.json", "'results'", "list")),
    "report_results_empty": Bad(["report", "{w}/results-empty.json"], 1, ("results-empty.json", "no results")),
    "report_row_without_latency": Bad(["report", "{w}/no-latency.json", "--plot", f"{OUT}.png"], 1,
                                      ("no-latency.json: row 2: 'latency_ms' missing",)),
    "report_row_without_seq_len": Bad(["report", "{w}/no-seq-len.json"], 1, ("row 1: 'seq_len' (or 'workload') missing",)),
    "report_passkey_file": Bad(["report", "{w}/passkey.json"], 1, ("this is a passkey results file",)),
    # -- report formats and CI gates: thresholds, baselines, schema versions, outputs -----------------
    "report_bad_threshold": Bad(["report", "{w}/profile.json", "--compare", "{w}/profile.json", "--fail-on",
                                 "latency:ten", "-o", f"{OUT}.html"], 1, ("--fail-on wants METRIC:+N%", "latency:ten")),
    "report_threshold_unknown_metric": Bad(["report", "{w}/profile.json", "--compare", "{w}/profile.json",
                                            "--fail-on", "speed:+5%"], 1, ("'speed:+5%'", "latency, memory")),
    "profile_bad_threshold": Bad(profile("--compare", "{w}/profile.json", "--fail-on", "latency+10", "--json",
                                         f"{OUT}.json"), 1, ("--fail-on wants",)),
    "profile_compare_without_fail_on": Bad(profile("--compare", "{w}/profile.json", "--json", f"{OUT}.json"), 1,
                                           ("--compare and --fail-on go together",)),
    "profile_baseline_wrong_schema": Bad(profile("--compare", "{w}/no-latency.json", "--fail-on", "latency:+10%",
                                                 "--json", f"{OUT}.json"), 1, ("no-latency.json: row 2",)),
    "report_baseline_wrong_schema": Bad(["report", "{w}/profile.json", "--compare", "{w}/results-5.json",
                                         "--fail-on", "latency:+10%"], 1, ("results-5.json", "'results'")),
    "report_newer_schema_version": Bad(["report", "{w}/schema-v3.json", "-o", f"{OUT}.html"], 1,
                                       ("schema-v3.json has results schema version 3", "upgrade edgekit")),
    "report_empty_sweep_baseline": Bad(["report", "{w}/profile.json", "--compare", "{w}/results-empty.json",
                                        "--fail-on", "memory:+10%"], 1, ("results-empty.json", "no results")),
    "report_unknown_format": Bad(["report", "{w}/profile.json", "--format", "pdf", "-o", f"{OUT}.pdf"], 1,
                                 ("unknown report format 'pdf'", "html")),
    "report_output_onto_a_directory": Bad(["report", "{w}/profile.json", "-o", "{w}"], 1, ("it is a directory",)),
    "report_output_parent_is_a_file": Bad(["report", "{w}/profile.json", "-o", "{w}/notes.txt/r.html"], 1,
                                          ("notes.txt is a file, not a folder",)),
    "report_output_read_only_folder": Bad(["report", "{w}/profile.json", "-o", "{w}/read-only/r.html"], 1,
                                          ("not writable",), needs_non_root=True),
    "report_passkey_option_not_passkey": Bad(["report", "{w}/profile.json", "--passkey", "{w}/profile.json", "-o",
                                              f"{OUT}.html"], 1, ("not an edgekit passkey or retrieval results file",)),
    # -- other model kinds: options, methods and checkpoints that do not fit ---------------------------
    "export_hilo_alpha_above_1": Bad(["export", "litv2-tiny", "-o", f"{OUT}.onnx", "--method", "hilo",
                                      "--alpha", "1.5"], 1, ("alpha", "<= 1")),
    "export_hilo_window_0": Bad(["export", "litv2-tiny", "-o", f"{OUT}.onnx", "--method", "hilo", "--window", "0"],
                                1, ("window", ">= 1")),
    "export_unknown_method_for_family": Bad(["export", "litv2-tiny", "-o", f"{OUT}.onnx", "--method", "dhsa"], 1,
                                            ("no method 'dhsa'", "hilo, msa, window, sra")),
    "export_option_of_another_method": Bad(["export", "litv2-tiny", "-o", f"{OUT}.onnx", "--method", "msa",
                                            "--alpha", "0.5"], 1, ("alpha does not apply to --method msa",
                                                                   "--method hilo")),
    "export_option_not_key_value": Bad(["export", "litv2-tiny", "-o", f"{OUT}.onnx", "-O", "alpha"], 1,
                                       ("--option wants key=value",)),
    "export_checkpoint_that_does_not_fit": Bad(["export", "litv2-tiny", "-o", f"{OUT}.onnx", "--weights",
                                                "{w}/wrong.safetensors"], 1, ("does not fit LITv2", "missing")),
    "export_checkpoint_missing": Bad(["export", "litv2-tiny", "-o", f"{OUT}.onnx", "--weights", "{w}/none.pth"], 1,
                                     ("weights file not found",)),
    "export_weights_for_a_folder": Bad(["export", "{w}/gpt2-folder", "-o", f"{OUT}.onnx", "--weights",
                                        "{w}/wrong.safetensors"], 1, ("--weights needs a preset name",)),
    "export_codebook_top_k_above_codes": Bad(["export", "embclip-tiny", "-o", f"{OUT}.onnx", "--method", "codebook",
                                              "-O", "top_k=100000"], 1, ("top_k",)),
    "export_codebook_top_k_negative": Bad(["export", "embclip-tiny", "-o", f"{OUT}.onnx", "--method", "codebook",
                                           "-O", "top_k=-1"], 1, ("top_k", ">= 0")),
    "export_vlm_keep_zero": Bad(["export", "llava-tiny", "-o", f"{OUT}.onnx", "--method", "flowcut", "-O", "keep=0"],
                                1, ("option 'keep' must be >= 1",)),
    "export_vlm_keep_negative": Bad(["export", "llava-tiny", "-o", f"{OUT}.onnx", "--method", "flowcut", "-O",
                                     "keep=-4"], 1, ("option 'keep' must be >= 1", "-4")),
    "export_vlm_keep_not_an_integer": Bad(["export", "llava-tiny", "-o", f"{OUT}.onnx", "--method", "random", "-O",
                                           "keep=1.5"], 1, ("option 'keep' must be an integer", "1.5")),
    "export_vlm_flowcut_keep_above_patches": Bad(["export", "llava-tiny", "-o", f"{OUT}.onnx", "--method", "flowcut",
                                                  "-O", "keep=100"], 1, ("keep (100) must be < the tower's 64 patches",)),
    "export_vlm_static_not_0_or_1": Bad(["export", "llava-tiny", "-o", f"{OUT}.onnx", "--method", "flowcut", "-O",
                                         "static=2"], 1, ("option 'static' must be 0 or 1",)),
    "export_vlm_image_size_zero": Bad(["export", "llava-tiny", "-o", f"{OUT}.onnx", "-O", "image_size=0"], 1,
                                      ("image_size 0 is not a positive multiple of", "patch size 8")),
    "export_vlm_keep_every_patch": Bad(["export", "llava-tiny", "-o", f"{OUT}.onnx", "--method", "uniform", "-O",
                                        "keep=64"], 1, ("keep (64) must be < the tower's 64 patches",)),
    "export_vlm_keep_on_dense": Bad(["export", "llava-tiny", "-o", f"{OUT}.onnx", "-O", "keep=16"], 1,
                                    ("keep does not apply to --method dense", "flowcut / uniform / random")),
    "export_vlm_image_size_not_a_multiple": Bad(["export", "llava-tiny", "-o", f"{OUT}.onnx", "-O", "image_size=60"],
                                                1, ("image_size 60 is not a positive multiple of", "patch size 8")),
    "export_vlm_static_on_uniform": Bad(["export", "llava-tiny", "-o", f"{OUT}.onnx", "--method", "uniform", "-O",
                                         "static=1"], 1, ("static does not apply to --method uniform",)),
    "export_tolerance_zero": Bad(["export", "litv2-tiny", "-o", f"{OUT}.onnx", "--atol", "0"], 1,
                                 ("tolerance (--atol) must be > 0",)),
    "profile_seq_lens_on_an_image_model": Bad(["profile", "{w}/litv2.onnx", "--seq-lens", "32"], 1,
                                              ("--seq-lens does not apply to image-classification",)),
    "profile_image_size_not_a_multiple": Bad(["profile", "{w}/litv2.onnx", "--image-sizes", "100", "--json",
                                              f"{OUT}.json"], 1, ("height 100 is not a multiple of 32",)),
    "profile_models_of_different_tasks": Bad(["profile", "{w}/litv2.onnx", "{w}/dense.onnx"], 1,
                                             ("different tasks", "image-classification", "text-generation")),
    "profile_batch_size_zero": Bad(["profile", "{w}/litv2.onnx", "--batch-sizes", "0"], 1, ("--batch-sizes",)),
    # -- quantize and compile ---------------------------------------------------------------------------
    "quantize_unknown_precision": Bad(["quantize", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--precision", "int3"], 1,
                                      ("unknown precision 'int3'", "int8-static")),
    "quantize_not_onnx": Bad(["quantize", "{w}/corrupt.onnx", "-o", f"{OUT}.onnx"], 1, ("corrupt.onnx", "not a readable")),
    "quantize_missing_model": Bad(["quantize", "{w}/missing.onnx", "-o", f"{OUT}.onnx"], 1, ("not found",)),
    "quantize_calibration_shape": Bad(["quantize", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--precision", "int8-static",
                                       "--calibration", "{w}/wrong-shape.npz"], 1, ("wrong-shape.npz", "'input_ids'")),
    "quantize_calibration_name": Bad(["quantize", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--precision", "int8-static",
                                      "--calibration", "{w}/wrong-name.npz"], 1, ("arrays ids", "inputs are input_ids")),
    "quantize_calibration_not_npz": Bad(["quantize", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--precision",
                                         "int8-static", "--calibration", "{w}/corrupt.onnx"], 1, ("not a readable .npz",)),
    "quantize_calibration_for_int8": Bad(["quantize", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--calibration",
                                          "{w}/wrong-name.npz"], 1, ("int8-static",)),
    "quantize_block_size": Bad(["quantize", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--precision", "int4",
                                "--block-size", "20"], 1, ("--block-size",)),
    "quantize_min_top1_unmet": Bad(["quantize", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--precision", "int4",
                                    "--min-top1", "1"], 1, ("top-1 agreement", "nothing written")),
    "quantize_onto_directory": Bad(["quantize", "{w}/dense.onnx", "-o", "{w}"], 1, ("is a directory",)),
    "quantize_parent_is_file": Bad(["quantize", "{w}/dense.onnx", "-o", "{w}/notes.txt/q.onnx"], 1,
                                   ("notes.txt is a file",)),
    "compile_unknown_ep": Bad(["compile", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--ep", "tpu"], 1, ("'tpu'", "cpu")),
    "compile_cuda_absent": Bad(["compile", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--ep", "cuda"], 1,
                               ("CUDAExecutionProvider", "not available")),
    "compile_not_onnx": Bad(["compile", "{w}/corrupt.onnx", "-o", f"{OUT}.onnx"], 1, ("corrupt.onnx",)),
    "compile_ort_suffix": Bad(["compile", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--format", "ort"], 1, ("*.ort",)),
    "compile_unknown_format": Bad(["compile", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--format", "tflite"], 1,
                                  ("unknown format 'tflite'",)),
    "compile_onto_directory": Bad(["compile", "{w}/dense.onnx", "-o", "{w}"], 1, ("is a directory",)),
    "compile_profile_mismatch": Bad(["compile", "{w}/dense.onnx", "-o", f"{OUT}.onnx", "--ep", "cpu", "--profile-file",
                                     "{profiles}/cuda.toml"], 1, ("CUDAExecutionProvider", "--ep cpu")),
    # -- export --with-decode and generate -----------------------------------------------------------
    "export_with_decode_logits_to_keep": Bad(["export", "llama-tiny", "--with-decode", "-o", OUT, "--logits-to-keep",
                                              "4"], 1, ("--with-decode", "--logits-to-keep")),
    "export_with_decode_onto_a_user_folder": Bad(["export", "llama-tiny", "--with-decode", "-o", "{w}"], 1,
                                                 ("not an edgekit model folder",)),
    "export_with_decode_onto_a_file": Bad(["export", "llama-tiny", "--with-decode", "-o", "{w}/notes.txt"], 1,
                                          ("it is a file",)),
    "generate_prompt_longer_than_context": Bad(["generate", "{w}/gen-context-4", "--prompt-ids", "1,2,3,4,5"], 1,
                                               ("the prompt has 5 tokens", "context is 4")),
    "generate_past_the_context": Bad(["generate", "{w}/gen-context-4", "--prompt-ids", "1,2", "--max-new-tokens", "3"],
                                     1, ("2 tokens + 3 new ones exceeds the context of 4", "at most 2")),
    "generate_context_beyond_the_model": Bad(["generate", "{w}/gen", "--prompt-ids", "1", "--context", "40000"], 1,
                                             ("context of 40000 tokens exceeds this folder's limit of 32768 tokens",)),
    "generate_context_1": Bad(["generate", "{w}/gen", "--prompt-ids", "1", "--context", "1"], 1,
                              ("context must be >= 2",)),
    "generate_old_format_folder": Bad(["generate", "{w}/gen-format-1", "--prompt-ids", "1"], 1,
                                      ("format 1", "copies the cache every token", "--with-decode")),
    "export_context_without_with_decode": Bad(["export", "llama-tiny", "-o", f"{OUT}.onnx", "--context", "64"], 1,
                                              ("--context", "needs --with-decode")),
    "export_with_decode_context_beyond_the_model": Bad(["export", "llama-tiny", "--with-decode", "-o", OUT,
                                                        "--context", "40000"], 1, ("exceeds the model's 32768",)),
    "export_beyond_positions_without_with_decode": Bad(["export", "llama-tiny", "-o", f"{OUT}.onnx",
                                                        "--beyond-positions"], 1,
                                                       ("--beyond-positions", "needs --with-decode")),
    "export_beyond_positions_without_context": Bad(["export", "llama-tiny", "--with-decode", "-o", OUT,
                                                    "--beyond-positions"], 1, ("give --context N",)),
    "quantize_folder_onto_itself": Bad(["quantize", "{w}/gen", "-o", "{w}/gen"], 1, ("is the model folder",)),
    "quantize_folder_onto_a_user_folder": Bad(["quantize", "{w}/gen", "-o", "{w}"], 1,
                                              ("not an edgekit model folder",)),
    "quantize_folder_with_calibration": Bad(["quantize", "{w}/gen", "-o", OUT, "--precision", "int8-static",
                                             "--calibration", "{w}/wrong-name.npz"], 1, ("drop --calibration",)),
    "quantize_folder_without_manifest": Bad(["quantize", "{w}/gen-no-manifest", "-o", OUT], 1,
                                            ("has no edgekit.json",)),
    "generate_empty_prompt": Bad(["generate", "{w}/gen", "--prompt-ids", ""], 1, ("the prompt is empty",)),
    "generate_no_prompt": Bad(["generate", "{w}/gen"], 1, ("--prompt TEXT or --prompt-ids",)),
    "generate_top_p_2": Bad(["generate", "{w}/gen", "--prompt-ids", "1,2", "--top-p", "2"], 1,
                            ("top-p must be in (0, 1]",)),
    "generate_temperature_negative": Bad(["generate", "{w}/gen", "--prompt-ids", "1", "--temperature", "-1"], 1,
                                         ("temperature must be >= 0",)),
    "generate_top_k_negative": Bad(["generate", "{w}/gen", "--prompt-ids", "1", "--top-k", "-2"], 1,
                                   ("top-k must be >= 0",)),
    "generate_empty_stop_string": Bad(["generate", "{w}/gen", "--prompt-ids", "1", "--stop", ""], 1,
                                      ("stop strings must not be empty",)),
    "generate_max_new_tokens_zero": Bad(["generate", "{w}/gen", "--prompt-ids", "1", "--max-new-tokens", "0"], 1,
                                        ("max_new_tokens must be >= 1",)),
    "generate_token_id_out_of_vocab": Bad(["generate", "{w}/gen", "--prompt-ids", "1,512"], 1,
                                          ("token id 512", "vocabulary")),
    "generate_text_prompt_without_tokenizer": Bad(["generate", "{w}/gen", "--prompt", "hello"], 1,
                                                  ("has no tokenizer", "token ids")),
    "generate_chat_without_tokenizer": Bad(["generate", "{w}/gen", "--prompt", "hello", "--chat"], 1,
                                           ("has no tokenizer",)),
    "generate_folder_without_decode_graph": Bad(["generate", "{w}/gen-no-decode", "--prompt-ids", "1"], 1,
                                                ("missing its decode (decode.onnx)", "--with-decode")),
    "generate_folder_without_manifest": Bad(["generate", "{w}/gen-no-manifest", "--prompt-ids", "1"], 1,
                                            ("has no edgekit.json", "--with-decode")),
    "generate_bad_manifest": Bad(["generate", "{w}/gen-bad-manifest", "--prompt-ids", "1"], 1,
                                 ("not a valid edgekit manifest",)),
    "generate_an_onnx_file": Bad(["generate", "{w}/dense.onnx", "--prompt-ids", "1"], 1,
                                 ("is a file, not a model folder",)),
    "generate_missing_folder": Bad(["generate", "{w}/no-such-folder", "--prompt-ids", "1"], 1, ("not found",)),
    # -- eval ppl / retrieval: tasks, lengths, budgets and texts that cannot work ------------------------
    "eval_retrieval_unknown_task": Bad(["eval", "retrieval", "{w}/dense-all.onnx", "--tasks", "passkey,needle",
                                        "--json", f"{OUT}.json"], 1, ("unknown task 'needle'", "multikey, multivalue")),
    "eval_retrieval_length_beyond_context": Bad(["eval", "retrieval", "{w}/dense-all.onnx", "--lengths", "4096,40000"],
                                                1, ("length 40000 is beyond the context", "32768 tokens")),
    "eval_ppl_length_beyond_context": Bad(["eval", "ppl", "{w}/dense-all.onnx", "--token-ids", "{w}/ids.txt",
                                           "--lengths", "40000"], 1, ("length 40000 is beyond the context",)),
    "eval_retrieval_samples_zero": Bad(["eval", "retrieval", "{w}/dense-all.onnx", "--samples", "0"], 1,
                                       ("--samples must be >= 1",)),
    "eval_budget_below_the_ops_bound": Bad(["eval", "ppl", "{w}/dhsa-all.onnx", "--token-ids", "{w}/ids.txt",
                                            "--lengths", "64", "--budgets", "64,16"], 1,
                                           ("budget_tokens (16) must cover", "(40)")),
    "eval_budget_zero": Bad(["eval", "retrieval", "{w}/dhsa-all.onnx", "--budgets", "0"], 1,
                            ("--budgets wants positive integers",)),
    "eval_budget_for_a_dense_model": Bad(["eval", "retrieval", "{w}/dense-all.onnx", "--budgets", "512", "--json",
                                          f"{OUT}.json"], 1, ("--budgets applies to DHSA models", "dense")),
    "eval_ppl_token_ids_too_short": Bad(["eval", "ppl", "{w}/dense-all.onnx", "--token-ids", "{w}/ids.txt",
                                         "--lengths", "64,1024", "--json", f"{OUT}.json"], 1,
                                        ("holds 300 tokens: too short for one window of 1024",)),
    "eval_ppl_text_too_short": Bad(["eval", "ppl", "{w}/vocab-all.onnx", "--tokenizer", "smollm2-135m", "--text",
                                    "{w}/notes.txt", "--lengths", "64"], 1, ("too short for one window of 64",)),
    "eval_ppl_text_not_utf8": Bad(["eval", "ppl", "{w}/dense-all.onnx", "--text", "{w}/junk.json"], 1,
                                  ("cannot read text file", "junk.json", "not UTF-8")),
    "eval_ppl_text_is_a_folder": Bad(["eval", "ppl", "{w}/dense-all.onnx", "--text", "{w}"], 1,
                                     ("cannot read text file",)),
    "eval_ppl_text_missing": Bad(["eval", "ppl", "{w}/dense-all.onnx", "--text", "{w}/none.txt"], 1,
                                 ("text file not found",)),
    "eval_ppl_token_ids_not_integers": Bad(["eval", "ppl", "{w}/dense-all.onnx", "--token-ids", "{w}/notes.txt"], 1,
                                           ("cannot read token ids", "notes.txt")),
    "eval_ppl_text_and_token_ids": Bad(["eval", "ppl", "{w}/dense-all.onnx", "--text", "{w}/notes.txt",
                                        "--token-ids", "{w}/ids.txt"], 1, ("not both",)),
    "eval_ppl_preset_without_tokenizer": Bad(["eval", "ppl", "{w}/dense-all.onnx", "--lengths", "64"], 1,
                                             ("records no tokenizer", "--tokenizer")),
    "eval_ppl_last_token_logits": Bad(["eval", "ppl", "{w}/dense.onnx", "--token-ids", "{w}/ids.txt", "--lengths",
                                       "64"], 1, ("--logits-to-keep 0",)),
    "eval_ppl_other_vocabulary": Bad(["eval", "ppl", "{w}/dense-all.onnx", "--tokenizer", "smollm2-135m",
                                      "--lengths", "64"], 1, ("vocabulary of 512",)),
    "eval_ppl_missing_model": Bad(["eval", "ppl", "{w}/missing.onnx", "--token-ids", "{w}/ids.txt"], 1,
                                  ("model file not found",)),
    "eval_ppl_image_model": Bad(["eval", "ppl", "{w}/litv2.onnx", "--token-ids", "{w}/ids.txt"], 1,
                                ("not an edgekit LLM prefill export",)),
    "eval_ppl_windows_zero": Bad(["eval", "ppl", "{w}/dense-all.onnx", "--token-ids", "{w}/ids.txt", "--windows",
                                  "0"], 1, ("--windows must be >= 1",)),
    "eval_retrieval_plot_onto_a_directory": Bad(["eval", "retrieval", "{w}/dense-all.onnx", "--plot", "{w}"], 1,
                                                ("it is a directory",)),
    "report_perplexity_as_accuracy": Bad(["report", "{w}/profile.json", "--retrieval", "{w}/ppl.json", "-o",
                                          f"{OUT}.html"], 1, ("holds perplexity results",)),
}
BAD_ROWS = [pytest.param(row, id=name) for name, row in ROWS.items()]
# Every row runs in-process through `edgekit.cli.main` (what the console script calls: cheap); these also
# run as a real process: the console script, its own streams and exit code.
IN_A_PROCESS = ["bare_edgekit_prints_help", "generate_top_p_2", "quantize_parent_is_file", "compile_cuda_absent", "export_without_output", "export_unknown_architecture",
                "profile_not_an_edgekit_model", "profile_corrupt_onnx", "export_parent_is_a_file",
                "report_row_without_latency", "report_not_json", "report_bad_threshold"]

OK_ROW = {"model": "dense.onnx", "method": "dense", "seq_len": 32, "status": "ok",
          "latency_ms": {"median": 1.0, "p90": 1.2}, "peak_rss_mb": 5.0}


def run_main(monkeypatch, capfd, args, cwd) -> subprocess.CompletedProcess:
    """`edgekit.cli.main()` in this process, with its exit code and both streams."""
    from edgekit.cli import main

    monkeypatch.delenv("EDGEKIT_DEBUG", raising=False)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["edgekit", *map(str, args)])
    capfd.readouterr()
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, info.value.code, out, err)


def _add_node_model(path: Path) -> None:
    """A valid ONNX model that edgekit did not export: one Add node, no edgekit metadata."""
    h = onnx.helper
    x, y, z = (h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xyz")
    onnx.save(h.make_model(h.make_graph([h.make_node("Add", ["x", "y"], ["z"])], "add", [x, y], [z])), path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Everything the rows point at, in one folder: a real tiny export and files of every wrong kind."""
    import edgekit
    from transformers import GPT2Config

    w = tmp_path_factory.mktemp("bad-input")
    edgekit.export("llama-tiny", str(w / "dense.onnx"), check_tokens=16)
    edgekit.export("litv2-tiny", str(w / "litv2.onnx"), method="hilo")
    _eval_models(w)
    from safetensors.torch import save_file
    import torch

    save_file({"head.weight": torch.zeros(3, 3)}, str(w / "wrong.safetensors"))
    np.savez(w / "wrong-shape.npz", input_ids=np.zeros((2, 2, 3, 4), np.int64))
    np.savez(w / "wrong-name.npz", ids=np.zeros((1, 8), np.int64))
    (w / "model.txt").write_bytes((w / "dense.onnx").read_bytes())
    _add_node_model(w / "add.onnx")
    (w / "corrupt.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (w / "junk.json").write_bytes(np.random.default_rng(1).bytes(4096))
    (w / "fake.gguf").write_bytes(b"GGUF" + bytes(60))
    (w / "notes.txt").write_text("median: fast\n")
    (w / "not-json.txt").write_text("median: fast\n")
    files = {"profile": {"results": [OK_ROW]}, "results-5": {"results": 5}, "results-empty": {"results": []},
             "no-latency": {"results": [OK_ROW, {k: v for k, v in OK_ROW.items() if k != "latency_ms"}]},
             "no-seq-len": {"results": [{k: v for k, v in OK_ROW.items() if k != "seq_len"}]},
             "passkey": {"results": [{"model": "m.onnx", "seq_len": 256, "found": True}], "summary": []},
             "schema-v3": {"results": [OK_ROW], "settings": {"schema_version": 3}}}
    for name, data in files.items():
        (w / f"{name}.json").write_text(json.dumps(data))
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0,
               architectures=["GPT2LMHeadModel"]).save_pretrained(w / "gpt2-folder")
    (w / "read-only").mkdir(mode=0o555)
    _generation_folders(w)
    return w


def _eval_models(w: Path) -> None:
    """Every-position-logits exports for `edgekit eval`: llama-tiny dense and DHSA, and one with SmolLM2's vocabulary."""
    import edgekit
    from test_eval import SMALL_DHSA, export_vocab_model

    from edgekit.passkey import load_tokenizer

    edgekit.export("llama-tiny", str(w / "dense-all.onnx"), check_tokens=16, logits_to_keep=0)
    edgekit.export("llama-tiny", str(w / "dhsa-all.onnx"), method="dhsa", check_tokens=16, logits_to_keep=0,
                   **SMALL_DHSA)
    export_vocab_model(w / "vocab-all.onnx", load_tokenizer(), 0, method="dense")
    np.savetxt(w / "ids.txt", np.random.default_rng(0).integers(0, 512, 300), fmt="%d")
    (w / "ppl.json").write_text(json.dumps({"kind": "perplexity", "results": [], "summary": []}))


def _generation_folders(w: Path) -> None:
    """A tiny model folder (`export --with-decode`) and broken copies of it."""
    import shutil

    from edgekit.model_folder import MANIFEST, export_folder

    export_folder("llama-tiny", str(w / "gen"), check_tokens=16)
    for name in ("gen-context-4", "gen-no-decode", "gen-no-manifest", "gen-bad-manifest", "gen-format-1"):
        shutil.copytree(w / "gen", w / name)
    manifest = json.loads((w / "gen" / MANIFEST).read_text())
    (w / "gen-context-4" / MANIFEST).write_text(json.dumps({**manifest, "max_context": 4, "context": 4}))
    old = {k: v for k, v in manifest.items() if k not in ("context", "cache", "precision", "quantization")}
    (w / "gen-format-1" / MANIFEST).write_text(json.dumps({**old, "format": 1}))
    (w / "gen-no-decode" / "decode.onnx").unlink()
    (w / "gen-no-manifest" / MANIFEST).unlink()
    (w / "gen-bad-manifest" / MANIFEST).write_text(json.dumps({"files": 3}))


def _argv(row: Bad, w: Path) -> list[str]:
    if row.needs_non_root and IS_ROOT:
        pytest.skip("root may write into a read-only folder")
    from edgekit.ep_profiles import profiles_dir

    return [a.format(w=w, profiles=profiles_dir()) for a in row.argv]


def check(proc: subprocess.CompletedProcess, row: Bad, cwd: Path) -> None:
    """The row's exit code and message; no traceback, no 'internal error', nothing written under out/."""
    streams = proc.stdout + proc.stderr
    assert proc.returncode == row.code, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in streams and "internal error" not in streams, streams
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if row.code == 0:
        assert not lines and all(text in proc.stdout for text in row.says), streams
    elif row.code == 2:  # click's layout: usage, the hint, a blank line, the error
        assert lines[-2].startswith("Try 'edgekit") and lines[-2].endswith(" --help' for help."), proc.stderr
        assert lines[-1].startswith("Error: ") and all(text in lines[-1] for text in row.says), proc.stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("Error: "), f"not one Error: line:\n{proc.stderr}"
        assert all(text in lines[0] for text in row.says), lines[0]
    out = cwd / "out"
    assert not out.exists() or not list(out.iterdir()), f"files written: {list(out.iterdir())}"


@pytest.mark.parametrize("row", BAD_ROWS)
def test_bad_input(row, inputs, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr("edgekit.profiling.find_spec", lambda name: None)  # as if llama-cpp-python were absent
    check(run_main(monkeypatch, capfd, _argv(row, inputs), tmp_path), row, tmp_path)


@pytest.mark.parametrize("row", [row for row in BAD_ROWS if row.id in IN_A_PROCESS])
def test_bad_input_console_script(row, inputs, tmp_path):
    check(edgekit(*_argv(row, inputs), cwd=tmp_path), row, tmp_path)


# ---------------------------------------------------------------------------------------------------
# signals and stale temp files

SLOW_SAVE = """
import sys, time
import edgekit.exporting as exporting
from edgekit.cli import main
save = exporting.write_self_contained
def slow_save(proto, path, *args, **kwargs):  # a save that lasts: the signal arrives while it runs
    save(proto, path, *args, **kwargs)
    time.sleep(120)
exporting.write_self_contained = slow_save
sys.argv = ["edgekit", *sys.argv[1:]]
main()
"""


def _wait_for_temp(folder: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in folder.glob(".m.onnx.edgekit-*.tmp") if p.stat().st_size > 0]
        if temps:
            return temps[0]
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no temp file appeared; stderr:\n{proc.communicate()[1]}")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_during_export_save_leaves_nothing(tmp_path, signum, code):
    """Terminated while the model is half saved: "Aborted.", exit 128 + signal, neither temp nor output left."""
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, "export", "llama-tiny", "-o", str(tmp_path / "m.onnx"),
                             "--check-tokens", "16"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    _wait_for_temp(tmp_path, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == "Aborted." and "Traceback" not in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_of_a_dead_process_is_removed_by_the_next_export(tmp_path, monkeypatch, capfd):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".m.onnx.edgekit-{dead.pid}-0badf00d.tmp"
    live = tmp_path / f".m.onnx.edgekit-{os.getpid()}-0000cafe.tmp"  # a process still writing: kept
    for temp in (stale, live):
        temp.write_bytes(b"half a model")
    proc = run_main(monkeypatch, capfd, ["export", "llama-tiny", "-o", tmp_path / "m.onnx", "--check-tokens", 16],
                    tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "m.onnx"])


# ---------------------------------------------------------------------------------------------------
# sweeps whose points fail


def test_profile_where_every_point_failed_exits_1_after_table_and_json(inputs, tmp_path, monkeypatch, capfd):
    """Each point is recorded (the sweep goes on), footnoted with its reason; then the error and exit 1."""
    proc = run_main(monkeypatch, capfd, ["profile", inputs / "dense.onnx", "--seq-lens", "32,64", "--repeat", 1,
                                         "--memory-limit-mb", 1, "--json", tmp_path / "oom.json"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: every point failed")
    results = json.loads((tmp_path / "oom.json").read_text())["results"]
    assert [(r["seq_len"], r["status"]) for r in results] == [(32, "oom"), (64, "oom")]
    assert all(r["speedup_vs_baseline"] is None for r in results)
    assert "| oom [1] |" in proc.stdout and "| oom [2] |" in proc.stdout
    assert "[1] dense.onnx @ 32 tokens: RSS passed the 1 MB limit" in proc.stdout
    assert "[2] dense.onnx @ 64 tokens: RSS passed the 1 MB limit" in proc.stdout


def test_passkey_records_a_failing_point_and_goes_on(tmp_path, monkeypatch, capfd):
    from edgekit.errors import ModelLoadError

    passkey = importlib.import_module("edgekit.passkey")
    try:
        vocab = len(passkey.load_tokenizer())
    except ModelLoadError as exc:
        pytest.skip(str(exc))
    h = onnx.helper
    ids = h.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"])
    logits = h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, "n", vocab])
    graph = h.make_graph([h.make_node("Cast", ["input_ids"], ["logits"], to=1)], "g", [ids], [logits])
    onnx.save(h.make_model(graph), tmp_path / "m.onnx")

    def run_case(session, tokenizer, case):  # the first length fails as ONNX Runtime would fail it
        if case["seq_len"] == 256:
            raise ShapeError("ONNX Runtime rejected the inputs: indices element out of data bounds")
        return {"seq_len": case["seq_len"], "depth": case["depth"], "trial": 0, "key": "1", "found": True}

    monkeypatch.setattr(passkey, "_run_case", run_case)
    monkeypatch.setattr("edgekit.session.Session", lambda *args, **kwargs: None)
    proc = run_main(monkeypatch, capfd, ["passkey", tmp_path / "m.onnx", "--lengths", "256,512", "--depths", "0.5",
                                         "--json", tmp_path / "k.json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "k.json").read_text())["results"]
    assert [(r["seq_len"], r["status"]) for r in rows] == [(256, "error"), (512, "ok")]
    assert "| 256 | 0/1 (1 failed) |" in proc.stdout and "| 512 | 1/1 |" in proc.stdout
    assert "[1] m.onnx @ 256 tokens, depth 0.5: ONNX Runtime rejected the inputs" in proc.stdout


# ---------------------------------------------------------------------------------------------------
# the Session API of an image model: feeds that cannot work are named before ONNX Runtime sees them

IMAGE_FEEDS = {
    "rank_3": (np.zeros((3, 64, 64), np.float32), "'image' must have 4 dims"),
    "one_channel": (np.zeros((1, 1, 64, 64), np.float32), "'image' dim 1 must be 3"),
    "side_not_a_multiple": (np.zeros((1, 3, 64, 100), np.float32), "width 100 is not a multiple of 32"),
    "integers": (np.zeros((1, 3, 64, 64), np.int64), "'image' must hold floats"),
}


@pytest.mark.parametrize("image, says", IMAGE_FEEDS.values(), ids=IMAGE_FEEDS.keys())
def test_image_session_rejects_what_cannot_work(inputs, image, says):
    from edgekit.session import Session

    session = Session(str(inputs / "litv2.onnx"))
    with pytest.raises(ShapeError, match=says):
        session.run({"image": image})
    assert session.run(np.zeros((2, 3, 64, 96), np.float32))["logits"].shape == (2, 1000)  # the control

