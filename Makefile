# Fresh machine: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build pinned here; GPU users: `make setup TORCH_SPEC=` after installing their own CUDA torch in $(VENV).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.atomfm-installed
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions

.PHONY: setup setup-bench browser large-molecules demo test lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install --quiet "$(TORCH_SPEC)"; fi
	# DeepSpeed first: its CPU communication op (compiled once, ~1 min) builds while the rest installs; if
	# that build fails here it is retried at the first DeepSpeed run, which reports why
	$(PY) -m pip install --quiet "$$(sed -n 's/^ *"\(deepspeed[^"]*\)",.*/\1/p' pyproject.toml)"
	$(PY) -c 'from deepspeed.comm.torch import build_shm_op; build_shm_op()' > $(VENV)/deepspeed_op_build.log 2>&1 & \
	op=$$!; \
	$(PY) -m pip install --quiet -e '.[dev,torchsim]' && \
	$(PY) -m pip install --quiet --no-deps 'MDAnalysisTests>=2.7'; installed=$$?; \
	wait $$op || echo "DeepSpeed's CPU op did not build now ($(VENV)/deepspeed_op_build.log); the first run builds it"; \
	exit $$installed
	# (MDAnalysisTests: real protein files, PDB/mmCIF/trajectories, for the demo corpus and tests; data only)
	touch $(STAMP)

setup: $(STAMP)

# MACE beside atomfm for benchmarks/bench_model.py (~20 s, ~50 MB); the torch spec keeps pip off the pinned torch
setup-bench: setup
	$(PY) -m pip install --quiet -e '.[dev,torchsim,bench]' $(if $(TORCH_SPEC),"$(TORCH_SPEC)")

DEMO := runs/demo
# the physics tasks in two processes, beside the accuracy tasks (PHYSICS_TASKS_2 after them): about equal halves
PHYSICS_TASKS := symmetry,chirality,eos,md_drift,diatomics
PHYSICS_TASKS_2 := relaxation
# smaller than the tasks' defaults, to keep the main job to its budget
PHYSICS_OPTIONS := --task-option eos.max_structures=8 --task-option md_drift.max_structures=2 \
	--task-option md_drift.steps=60 --task-option diatomics.points=12
PHYSICS_OPTIONS_2 := --task-option relaxation.max_structures=2
# the recipe's length: the product's conservative stage runs PRODUCT_STEPS; the pretrained-versus-scratch pair
# runs COMPARE_STEPS each (the same config, the same batches, from the direct stage and from random weights).
# Measured: docs/training.md, "The demo recipe": 1,500 product steps make molecule forces 3× better than zero
# force; about 17 minutes in all on a fast 2-core machine, about 32 on the slower ones measured before.
DIRECT_STEPS ?= 180
PRODUCT_STEPS ?= 1500
COMPARE_STEPS ?= 150
CONSERVATIVE := $(VENV)/bin/deepspeed --num_accelerators 2 --module launch.cli train \
	--config configs/finetune_conservative_demo.yaml
COMPARE := $(CONSERVATIVE) run.max_steps=$(COMPARE_STEPS) validation.every=75 run.checkpoint_every=75
demo: setup
	$(VENV)/bin/atomfm data demo --out data/demo --scale demo
	$(VENV)/bin/atomfm data inspect data/demo
	# stage 1, direct forces (the fast objective: denoising, masked atoms, energies, direct forces), 2 processes
	$(VENV)/bin/deepspeed --num_accelerators 2 --module launch.cli train --config configs/pretrain_demo.yaml \
		run.max_steps=$(DIRECT_STEPS)
	# stage 2, conservative forces from stage 1's weights: the forces the calculator serves (the product)
	$(CONSERVATIVE) run.max_steps=$(PRODUCT_STEPS)
	# what pretraining is worth: the same stage at a shorter equal budget (steps, batches, seed) from stage 1's
	# weights and from scratch
	$(COMPARE) run.out_dir=$(DEMO)/pretrained run.name=pretrained_conservative_demo
	$(COMPARE) model.init_from=null run.out_dir=$(DEMO)/scratch run.name=scratch_conservative_demo
	$(VENV)/bin/atomfm export $(DEMO)/conservative --best --out $(DEMO)/export & a=$$!; \
	$(VENV)/bin/atomfm export $(DEMO)/scratch --best --out $(DEMO)/scratch/export & b=$$!; \
	$(VENV)/bin/atomfm export $(DEMO)/pretrained --best --out $(DEMO)/pretrained/export & d=$$!; \
	$(VENV)/bin/atomfm export $(DEMO)/direct --out $(DEMO)/direct/export; c=$$?; \
	wait $$a && wait $$b && wait $$d && exit $$c
	# the product on the held-out test split, beside its first stage, the pretrained/scratch pair, EMT and the
	# reference+zero-force baseline; the physics tasks at the same time (two processes)
	{ $(VENV)/bin/atomfm eval --checkpoint $(DEMO)/export --name atomfm-demo --checkpoint $(DEMO)/direct/export \
		--name atomfm-demo-direct-stage --checkpoint $(DEMO)/pretrained/export --name atomfm-demo-pretrained-short \
		--checkpoint $(DEMO)/scratch/export --name atomfm-demo-scratch-short \
		--calculator ase.calculators.emt:EMT --name EMT --baseline --ridge-baseline \
		--data data/demo --tasks accuracy,conformer_ranking --out $(DEMO)/eval --no-progress && \
	  $(VENV)/bin/atomfm eval --checkpoint $(DEMO)/export --name atomfm-demo --data data/demo \
		--tasks $(PHYSICS_TASKS_2) $(PHYSICS_OPTIONS_2) --out $(DEMO)/eval --no-progress; } & accuracy=$$!; \
	$(VENV)/bin/atomfm eval --checkpoint $(DEMO)/export --name atomfm-demo --data data/demo \
		--tasks $(PHYSICS_TASKS) $(PHYSICS_OPTIONS) --out $(DEMO)/eval --no-progress; physics=$$?; \
	wait $$accuracy && exit $$physics
	$(VENV)/bin/atomfm leaderboard $(DEMO)/eval --out $(DEMO)/report

# 221 drug-like molecules of 30-80 atoms (MiniDrugBank, not in the demo corpus), GFN2-xTB labelled: the
# accuracy race's larger-molecule test set (benchmarks/bench_accuracy.py); fetches the sdist from PyPI once
large-molecules: setup
	$(PY) benchmarks/make_large_molecules.py

# Debian's headless Chromium and its driver for the leaderboard's browser test (selenium drives them)
browser:
	if [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
	fi

# two pytest workers, one test file each (module fixtures stay in one process): 9 min here instead of 11.5
test: setup browser
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) data/demo .pytest_cache
