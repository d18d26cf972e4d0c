# FedPFT for FedML: the two commands a newcomer needs, plus helpers.
#   make run    set up .venv (if needed) and run the main job (MPI simulation, MiniLM-L6, Rotten Tomatoes)
#   make test   set up .venv (if needed) and run the whole test suite
#   make test-fast  the same without the multi-process tests (markers `process`, `netns`): about 4 minutes
#   make bench  set up .venv with the optional text corpora and run the benchmark suite (resumable)
PY := .venv/bin/python

.PHONY: setup run test test-fast bench compress clean
setup:
	bash scripts/setup_env.sh

run: setup
	$(PY) -m fedpft_algo.cli run --cf fedml_config/simulation_mpi.yaml $(ARGS)

test: setup
	bash scripts/run_tests.sh $(ARGS)

test-fast: setup
	bash scripts/run_tests.sh fast $(ARGS)

bench:
	bash scripts/setup_env.sh data
	[ -d models/vit-small ] || $(PY) -m fedpft_algo.cli pretrain-vit --out models/vit-small
	$(PY) -m fedpft_algo.cli bench --cf fedml_config/bench.yaml $(ARGS)

compress: setup
	$(PY) -m fedpft_algo.cli compress --model minilm-l6 $(ARGS)

clean:
	rm -rf runs fedml_config/.cache .pytest_cache
