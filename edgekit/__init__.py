"""edgekit: efficient-attention models exported to ONNX with custom ops, run and profiled in ONNX Runtime.

The public API, one plain function per pipeline step:
    export(model, output, method=...)   model -> checked ONNX file
    quantize(model, output, precision=...)  int8 / int8-static / int8-block / int4 / fp16, checked vs the float model
    quantize_folder(folder, output, ...)    both graphs of a model folder (export --with-decode), as one new folder
    compile_model(model, output, ep=...)    ahead-of-time ORT optimization for a provider, placement report
    Session(path, ep=...)               run an exported model (edgekit ops included)
    Generator(folder, ep=...)           text generation: a prefill + cached decode folder (export --with-decode)
    profile(models, seq_lens)           prefill latency / peak memory side by side
                                        (llamacpp_sweep=LlamaCppSweep(...): tune the llama.cpp baseline first)
    report.markdown(results)            render profile results (report_formats: HTML / CSV / JSON of several files;
                                        gates: compare with a baseline for CI)
"""

import importlib

__version__ = "0.1.0"

_LAZY = {  # imported on first use: `import edgekit` stays fast and torch-free
    "export": ("edgekit.exporting", "export"),
    "quantize": ("edgekit.quantizing", "quantize"),
    "quantize_folder": ("edgekit.folder_quantizing", "quantize_folder"),
    "compile_model": ("edgekit.compiling", "compile_model"),
    "Session": ("edgekit.session", "Session"),
    "Generator": ("edgekit.generation", "Generator"),
    "profile": ("edgekit.profiling", "profile"),
    "LlamaCppSweep": ("edgekit.llamacpp_sweep", "SweepSpace"),
    "passkey": ("edgekit.passkey", "passkey"),
    "report": ("edgekit.report", None),
    "errors": ("edgekit.errors", None),
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module
