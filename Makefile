# FedPFT for FedML: the two commands a newcomer needs, plus helpers.
#   make run    set up .venv (if needed) and run the main job (MPI simulation, MiniLM-L6, Rotten Tomatoes)
#   make test   set up .venv (if needed) and run the whole test suite
PY := .venv/bin/python

.PHONY: setup run test compress clean
setup:
	bash scripts/setup_env.sh

run: setup
	$(PY) -m fedpft_algo.cli run --cf fedml_config/simulation_mpi.yaml $(ARGS)

test: setup
	bash scripts/run_tests.sh $(ARGS)

compress: setup
	$(PY) -m fedpft_algo.cli compress --model minilm-l6 $(ARGS)

clean:
	rm -rf runs fedml_config/.cache .pytest_cache
