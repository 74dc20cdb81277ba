"""The llama.cpp sweep's logic without llama.cpp: which settings it tries, which it keeps, what it records.

A fake measurement stands in for the worker process: its latency is a table over the settings, so the
winner is known in advance.
"""

from __future__ import annotations

import itertools

import pytest

from edgekit import profiling, report
from edgekit.errors import ProfileError
from edgekit.llamacpp import LlamaCppSettings
from edgekit.llamacpp_sweep import AXES, SweepSpace, best_trial, parse_axis, settings_of, space_from, tune

SPACE = SweepSpace(threads=(1, 2, 4), strategy="axes")


def latency(s: LlamaCppSettings) -> float:
    """4 threads, 2048/2048, flash attention, q8_0 and mmap are each faster; threads matter most."""
    return (100 / s.threads + (0 if (s.n_batch, s.n_ubatch) == (2048, 2048) else 5)
            + (0 if s.flash_attn else 3) + (0 if s.kv_type == "q8_0" else 2) + (0 if s.mmap else 1))


def fake_row(s: LlamaCppSettings, fails=lambda s: False) -> dict:
    if fails(s):
        return {"model": "m.gguf", "status": "error", "error": f"cannot run {s.label()}"}
    return {"model": "m.gguf", "status": "ok", "latency_ms": {"median": latency(s), "p90": latency(s)},
            "peak_rss_mb": 10.0}


def test_axes_strategy_tries_each_axis_from_the_best_so_far_and_keeps_the_fastest():
    result = tune(SPACE, fake_row)
    trials = result["trials"]
    assert len(trials) == SPACE.trial_count() == 1 + 2 + 2 + 1 + 1 + 1
    assert [t["axis"] for t in trials] == ["start", "threads", "threads", "batch", "batch", "flash_attn",
                                           "kv_type", "mmap"]
    assert result["chosen"] == {"threads": 4, "n_batch": 2048, "n_ubatch": 2048, "flash_attn": True,
                                "kv_type": "q8_0", "mmap": True}
    for trial in trials[3:]:  # after the threads axis, every trial keeps the 4 threads that won it
        assert trial["settings"]["threads"] == 4
    assert all(t["median_ms"] == latency(LlamaCppSettings(**t["settings"])) for t in trials)
    assert result["rows"][result["winner"]]["latency_ms"]["median"] == min(t["median_ms"] for t in trials)


def test_start_is_llama_cpp_default_when_listed_else_the_first_value():
    start = SweepSpace(threads=(3, 1), batch=((512, 512), (2048, 512)), kv_type=("q8_0",)).start()
    assert start["batch"] == (2048, 512) and start["kv_type"] == "q8_0" and start["flash_attn"] is True
    assert start["threads"] in (3, 1)


def test_grid_strategy_tries_every_combination_once():
    space = SweepSpace(threads=(1, 2), strategy="grid")
    result = tune(space, fake_row)
    seen = [tuple(sorted(t["settings"].items())) for t in result["trials"]]
    assert len(seen) == len(set(seen)) == space.trial_count() == 2 * 3 * 2 * 2 * 2
    assert result["chosen"]["threads"] == 2 and result["chosen"]["kv_type"] == "q8_0"


def test_failed_trials_are_recorded_and_never_chosen():
    fails = lambda s: s.kv_type == "q8_0" and not s.flash_attn or s.threads == 4  # noqa: E731
    result = tune(SPACE, lambda s: fake_row(s, fails))
    failed = [t for t in result["trials"] if t["status"] == "error"]
    assert failed and all("cannot run" in t["error"] and "median_ms" not in t for t in failed)
    assert result["chosen"]["threads"] == 2  # 4 threads would win, but every run of it failed


def test_nothing_is_chosen_when_every_trial_fails():
    result = tune(SPACE, lambda s: fake_row(s, lambda _: True))
    assert result["chosen"] is None and result["winner"] is None
    assert len(result["trials"]) == SPACE.trial_count()


def test_best_trial_takes_the_first_of_equal_medians():
    trials = [{"status": "ok", "median_ms": 5.0, "n": 1}, {"status": "error"}, {"status": "ok", "median_ms": 5.0, "n": 2}]
    assert best_trial(trials)["n"] == 1 and best_trial([{"status": "oom"}]) is None


@pytest.mark.parametrize("text, axis, values", [
    ("threads=1,2,2", "threads", (1, 2)),
    ("batch=512/512, 2048/512,1024", "batch", ((512, 512), (2048, 512), (1024, 1024))),
    ("fa=on,off", "flash_attn", (True, False)),
    ("kv=f16,Q8_0", "kv_type", ("f16", "q8_0")),
    ("mmap=off", "mmap", (False,)),
])
def test_axis_values_parse(text, axis, values):
    assert parse_axis(text) == (axis, values)


@pytest.mark.parametrize("text, says", [
    ("threads=0", "bad threads values '0' (integers >= 1)"),
    ("threads=two", "bad threads values"),
    ("batch=512/2048", "N_UBATCH <= N_BATCH"),
    ("kv=q3", "bad kv_type values 'q3'"),
    ("fa=maybe", "on / off"),
    ("speed=1", "AXIS one of threads, batch"),
    ("threads", "AXIS=V1,V2"),
    ("threads=", "has no values"),
])
def test_bad_axis_values_name_themselves(text, says):
    with pytest.raises(ProfileError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_axis(text)


def test_a_fixed_thread_count_fixes_the_threads_axis_unless_one_is_given():
    assert space_from([], threads=2).threads == (2,)
    assert space_from(["threads=1,4"], threads=2).threads == (1, 4)
    assert space_from(["kv=f16"]).kv_type == ("f16",) and space_from([]).threads[0] == 1


def test_a_space_refuses_what_cannot_run():
    with pytest.raises(ProfileError, match="strategy 'random'"):
        space_from([], "random")
    with pytest.raises(ProfileError, match="batch 512/1024"):
        SweepSpace(batch=((512, 1024),))
    with pytest.raises(ProfileError, match="'threads' has no values"):
        SweepSpace(threads=())


def test_every_point_becomes_valid_runner_settings():
    space = SweepSpace(threads=(1, 2))
    for values in itertools.product(*(getattr(space, a) for a in AXES)):
        settings = settings_of(dict(zip(AXES, values)))
        assert settings.n_ubatch <= settings.n_batch


# ------------------------------------------------------------------ through profile(), measurement faked

@pytest.fixture
def fake_llama(tmp_path, monkeypatch):
    """A .gguf profile() accepts, and a worker that times settings by the table above (no llama.cpp)."""
    calls = []

    def measure(model, workload, repeat, warmup, ep, threads, timeout_s, memory_limit_mb, decode_tokens=None,
                llamacpp=None):
        calls.append((workload["seq_len"], llamacpp))
        row = fake_row(LlamaCppSettings(**llamacpp))
        row["latency_ms"]["median"] *= workload["seq_len"] / 256  # longer prompts take longer
        return {**row, "model": model, "workload": workload, "seq_len": workload["seq_len"], "method": "llama.cpp",
                "runner": {"engine": "llama.cpp", **llamacpp}}

    monkeypatch.setattr(profiling, "find_spec", lambda name: object())  # as if llama-cpp-python were here
    monkeypatch.setattr(profiling, "_measure_in_subprocess", measure)
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return str(path), calls


def test_sweep_at_one_length_applies_the_winner_to_the_others(fake_llama, tmp_path):
    gguf, calls = fake_llama
    steps = []
    results = profiling.profile([gguf], [256, 1024, 4096], repeat=1, llamacpp_sweep=SPACE, sweep_at=256,
                                on_step=lambda label, done, total: steps.append((label, done, total)))
    n = SPACE.trial_count()
    assert len(calls) == n + 2  # the trials at 256, then one run each at 1024 and 4096 (256 is a trial)
    assert [seq for seq, _ in calls[n:]] == [1024, 4096]
    sweep, = results["llamacpp_sweeps"]
    assert sweep["workload"] == {"seq_len": 256} and len(sweep["trials"]) == n and "rows" not in sweep
    assert all(settings == sweep["chosen"] for _, settings in calls[n:])
    for row in results["results"]:
        assert row["llamacpp_sweep"] == {"tuned_at": {"seq_len": 256}, "strategy": "axes", "trials": n,
                                         "chosen": sweep["chosen"]}
    assert results["settings"]["llamacpp_sweep"]["sweep_at"] == 256
    assert [done for _, done, _ in steps] == list(range(n + 2)) and {t for _, _, t in steps} == {n + 2}
    assert steps[0][0].startswith("tuning m.gguf @ 256 tokens: t")
    path = tmp_path / "r.json"
    report.write_json(results, str(path))
    table = report.markdown(report.load_results(str(path)))
    assert "| llama.cpp settings |" in table
    assert "t4 b2048/2048 fa kv=q8_0 mmap (best of 8 at 256 tokens)" in table
    assert "t4 b2048/2048 fa kv=q8_0 mmap (best of 8) |" in table  # the row it was tuned at


def test_without_sweep_at_every_length_is_tuned_on_its_own(fake_llama):
    gguf, calls = fake_llama
    results = profiling.profile([gguf], [256, 512], repeat=1, llamacpp_sweep=SPACE)
    assert len(calls) == 2 * SPACE.trial_count()
    assert [s["workload"] for s in results["llamacpp_sweeps"]] == [{"seq_len": 256}, {"seq_len": 512}]
    assert [r["llamacpp_sweep"]["tuned_at"]["seq_len"] for r in results["results"]] == [256, 512]


def test_a_length_where_every_setting_failed_is_an_error_row(fake_llama, monkeypatch):
    gguf, _ = fake_llama
    def out_of_memory(model, workload, *args, llamacpp=None, **kwargs):
        return {"model": model, "workload": workload, "seq_len": workload["seq_len"], "status": "oom",
                "error": "out of memory"}

    monkeypatch.setattr(profiling, "_measure_in_subprocess", out_of_memory)
    results = profiling.profile([gguf], [256], repeat=1, llamacpp_sweep=SweepSpace(threads=(1,)))
    row, = results["results"]
    assert row["status"] == "error" and row["error"] == ("every llama.cpp setting failed when tuning at 256 tokens "
                                                         "(out of memory)")
    assert results["llamacpp_sweeps"][0]["chosen"] is None
    report.ResultsFile.model_validate(results)


@pytest.mark.parametrize("kwargs, says", [
    (dict(sweep_at=256), "needs a llama.cpp sweep"),
    (dict(llamacpp_sweep=SPACE, sweep_at=0), "sweep_at must be >= 1"),
    (dict(llamacpp_sweep=SPACE, decode_tokens=4), "separate run"),
])
def test_sweep_requests_that_cannot_work_fail_before_any_run(fake_llama, kwargs, says):
    gguf, calls = fake_llama
    with pytest.raises(ProfileError, match=says):
        profiling.profile([gguf], [256], repeat=1, **kwargs)
    assert calls == []


def test_a_sweep_file_with_a_broken_trial_is_named(tmp_path):
    import json

    ok_row = {"model": "m.gguf", "seq_len": 256, "status": "ok", "latency_ms": {"median": 1.0, "p90": 1.0},
              "peak_rss_mb": 1.0}
    sweep = {"model": "m.gguf", "workload": {"seq_len": 256}, "strategy": "axes", "chosen": None,
             "trials": [{"axis": "start", "status": "ok"}]}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"results": [ok_row], "llamacpp_sweeps": [sweep]}))
    with pytest.raises(ProfileError, match="settings"):
        report.load_results(str(path))
