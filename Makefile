# dishwatch — every command a developer or CI needs.  `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DATA   ?= data/dsm100
PRESET ?= dsm100

.PHONY: help setup setup-edge run test lint format data model bench deploy clean dashboard pull-data

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# --- environments -------------------------------------------------------------------------------
# Stamps make setup idempotent and quick: pip runs again only when pyproject.toml changes.
$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	touch $@

$(VENV)/.edge: pyproject.toml $(VENV)/.created
	$(PIP) install --quiet -e ".[edge]"
	touch $@

$(VENV)/.full: pyproject.toml $(VENV)/.created
	$(PIP) install --quiet -e ".[edge,train,features,dev]"
	touch $@

setup-edge: $(VENV)/.edge system-deps  ## the device's environment only (no TensorFlow)

setup: $(VENV)/.full system-deps  ## everything: edge, train, dev tools, system packages

.PHONY: system-deps
system-deps:  ## Debian packages the tests need (installed when missing and root)
	@bash scripts/system-deps.sh

# --- the two commands -------------------------------------------------------------------------
# make run: a synthetic pass rendered as a 1280x720 clip from the test plates of $(DATA), the data the default
# bundle was made from (its dishes are the menu), watched by the daemon with examples/pass.toml; each event is
# printed as one JSON line. The clip is rendered again when it was made from other data. Publishes to
# mqtt://127.0.0.1:1883 when a broker answers there (nothing is started); otherwise events wait in
# data/spool.sqlite for the next run.
run: setup-edge  ## render a service clip of the pass and run the edge daemon on it (events on stdout)
	@test -d $(DATA)/test || $(PY) -m train synth --preset $(PRESET) --out $(DATA)
	@grep -qs '"image": "$(DATA)/' data/pass.timeline.json || \
		$(PY) -m edge clip --data $(DATA) --out data/pass.mp4 --timeline data/pass.timeline.json
	$(PY) -m edge run --config examples/pass.toml --print-events

test: setup  ## the whole test suite (installs what it needs first)
	$(PY) -m pytest -q

# --- the rest -----------------------------------------------------------------------------------
lint: setup  ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup  ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

data: setup-edge  ## synthetic dsm50 and dsm100 presets under data/
	$(PY) -m train synth --preset dsm50 --out data/dsm50
	$(PY) -m train synth --preset dsm100 --out data/dsm100

.PHONY: train evaluate bench-train
train: setup  ## fit the Inception CAE on $(DATA) into runs/$(PRESET) (long: 200 epochs; PRECISION=mixed_bfloat16)
	$(PY) -m train fit --data $(DATA) --out runs/$(PRESET) --precision $(or $(PRECISION),float32)

evaluate: setup  ## evaluate runs/$(PRESET) on $(DATA): metrics JSON + HTML report
	$(PY) -m train evaluate --model runs/$(PRESET) --data $(DATA) --methods mse,ssim,local \
		--json runs/$(PRESET)/metrics.json --report runs/$(PRESET)/report

.PHONY: twins
twins: setup  ## each test defect of $(DATA) beside its defect-free twin, scored by MODEL (default models/default; LEARNED=file) -> runs/twins
	test -d $(DATA) || $(PY) -m train synth --preset $(PRESET) --out $(DATA)
	$(PY) -m train twins --model $(or $(MODEL),models/default) --data $(DATA) --json runs/twins/twins.json \
		--report runs/twins $(if $(LEARNED),--learned $(LEARNED))

bench-train: setup  ## training throughput (img/s) vs the machine's float32 bound -> bench/results/
	$(PY) bench/train_throughput.py --levers

# `make model [CORESET=0.02]`: the committed default bundle, models/default. Measurement chose the method (README,
# "Status"): `effnet-knn`, a memory bank of pretrained EfficientNet-Lite2 patch features at 224 px, no training,
# with a coarse bank of its first stride-32 block averaged in, each bank row's distance divided by its held-out
# good distance (fit --backbone, --coarse-weight, --distance calibrated: the defaults).
# A 2 % coreset of dsm100's training patches is about 4 800 patches (1.6 MB of float16), searched on the device by
# convert's int8 search.tflite (convert --search; README "The search model"); a 5 % bank scored within the
# coreset's seed noise of the 2 % one (image AUROC 0.786-0.795 vs 0.784-0.804) for 2.5x the search.
KNN_IMAGE_SIZE = $(or $(IMAGE_SIZE),224)
KNN_CORESET = $(or $(CORESET),0.02)

.PHONY: bench-latency model-cae
model: setup  ## synth $(PRESET) -> fit --method effnet-knn -> convert (int8 where it holds parity) into models/default (CORESET=0.02)
	test -d $(DATA) || $(PY) -m train synth --preset $(PRESET) --out $(DATA)
	$(PY) -m train fit --method effnet-knn --data $(DATA) --out runs/default --image-size $(KNN_IMAGE_SIZE) \
		--coreset $(KNN_CORESET)
	$(PY) -m convert --model runs/default --data $(DATA) --out models/default --name default

# `make model-cae [EPOCHS=200] [CONFIG=half]`: the seed's method, the Inception CAE scored by reconstruction error,
# into models/cae. `half` (2.9 M parameters, 0.64 GMAC at 128 px) keeps the int8 model.tflite under 3 MB; `seed`
# would be 11.5 MB. CONFIG is read here only as an architecture name (deploy reads its own CONFIG, a file).
MODEL_EPOCHS = $(or $(EPOCHS),200)
MODEL_CONFIG = $(or $(CONFIG),half)

model-cae: setup  ## synth $(PRESET) -> fit the Inception CAE -> convert (auto) into models/cae (EPOCHS=200 CONFIG=half)
	test -d $(DATA) || $(PY) -m train synth --preset $(PRESET) --out $(DATA)
	$(PY) -m train fit --data $(DATA) --out runs/cae --epochs $(MODEL_EPOCHS) --config $(MODEL_CONFIG)
	$(PY) -m convert --model runs/cae --data $(DATA) --out models/cae --name cae

bench-latency: setup  ## per-crop latency: Keras vs TFLite float32/float16/int8, 1-2 threads, scorer RSS
	$(PY) bench/latency.py --config $(MODEL_CONFIG)

.PHONY: bench-daemon
bench-daemon: setup-edge  ## the daemon on a 1280x720 15 fps clip: idle/busy CPU, still->event latency, RSS
	$(PY) bench/daemon_bench.py

# `make bench-learning [ALERT=0.01]`: a service simulated on new good photos of the dsm100 menu (data/d16, the same
# preset with 16 photos a dish): the false alarms of the first half are taught to models/default as the daemon
# does (edge/learning.py); the second half and the test defects are scored before and after, and the crop's time
# with and without the learned rows is measured side by side.
.PHONY: bench-learning
bench-learning: setup  ## false alarms taught on the device: future false alarms, recall, ms per crop -> bench/results/
	test -d data/dsm100 || $(PY) -m train synth --preset dsm100 --out data/dsm100
	test -d data/d16 || $(PY) -m train synth --preset dsm100 --train-per-dish 16 --out data/d16
	$(PY) bench/learning.py --alert $(or $(ALERT),0.01)

# `make bench-methods [PRESET=dsm50] [EPOCHS=200]`: every score method (the seed's CAE as mse / ssim / local,
# cae-knn on that CAE's encoder, effnet-knn) fitted on data/$(PRESET), float and int8, on its test split, with the
# per-crop time side by side. Trains what runs/ lacks first: the CAE's 200 epochs take over an hour on 2 cores
# (the README's table: EPOCHS=100). Not part of `make bench` for that reason.
.PHONY: bench-methods
bench-methods: setup  ## every score method, float and int8, one table per preset -> bench/results/methods-<preset>.json
	test -d data/$(PRESET) || $(PY) -m train synth --preset $(PRESET) --out data/$(PRESET)
	test -f runs/cae-$(PRESET)/config.json || $(PY) -m train fit --data data/$(PRESET) --out runs/cae-$(PRESET) \
		--config half --epochs $(MODEL_EPOCHS)
	test -f runs/knn-$(PRESET)/config.json || $(PY) -m train fit --method effnet-knn --data data/$(PRESET) \
		--out runs/knn-$(PRESET) --image-size $(KNN_IMAGE_SIZE) --coreset $(KNN_CORESET)
	$(PY) bench/methods.py --data data/$(PRESET) --cae-run runs/cae-$(PRESET) --knn-run runs/knn-$(PRESET)

bench: bench-train bench-latency bench-daemon bench-learning  ## all benchmarks (results in bench/results/)

# DEVICE=user@host [BUNDLE=models/default] [CONFIG=file] [FORCE_CONFIG=1] [SSH_PORT=22] [MQTT_PASSWORD_FILE=file]:
# make hands its command-line variables to the script through the environment; no secret passes through here.
deploy:  ## ship edge/ + a bundle to DEVICE=user@host over SSH as a systemd service (health check, rollback)
	@bash scripts/deploy.sh

# DEVICE=user@host [SSH_PORT=22] [OUT=data/feedback-<host>] [DATASET_DIR=/var/lib/dishwatch/feedback]
# [LEARNED_FILE=/var/lib/dishwatch/learned.npz] (empty: not pulled)
pull-data:  ## copy the staff-feedback dataset (MVTec layout) and learned rows from DEVICE=user@host into data/feedback-<host>
	@bash scripts/pull-data.sh

dashboard: setup-edge  ## the pass dashboard on http://127.0.0.1:8080/ for the broker mqtt://127.0.0.1:1883
	$(PY) -m edge dashboard --mqtt mqtt://127.0.0.1:1883 --port 8080

clean:  ## remove the virtual environment and caches (keeps data/ and runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
