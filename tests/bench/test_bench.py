"""``fedpft bench``: the yaml, the matrix, per-cell configs, and a tiny end-to-end bench with resume."""
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from fedpft_algo.bench.runner import Cell, cell_config, config_hash, load_spec, plan_cells, run_bench
from fedpft_algo.bench.report import cell_record, paired_gap, targets
from fedpft_algo.errors import ConfigError

REQUIRED = ("method", "task", "partition", "seed", "final_accuracy", "best_accuracy", "sub_accuracy", "macro_f1",
            "upload_bytes_per_client_round", "download_bytes_per_client_round", "client_epoch_seconds",
            "client_peak_mem_mb", "server_align_seconds", "wall_seconds")


def _bench_yaml(tmp_path, model="minilm-l6", **bench):
    config = {
        "bench": {"methods": ["fedpft_n", "fedavg"], "tasks": ["rotten_tomatoes"], "partitions": ["homo"],
                  "seeds": [0], "cell_timeout": 240, "probe_examples": 16,
                  "baseline_args": {"client_optimizer": "adam", "learning_rate": 5e-5}, **bench},
        "common_args": {"training_type": "simulation", "random_seed": 0, "using_mlops": False},
        "data_args": {"dataset": "rotten_tomatoes", "partition_method": "hetero", "partition_alpha": 1.0,
                      "max_train_examples": 48, "max_test_examples": 24},
        "model_args": {"model": model},
        "train_args": {"federated_optimizer": "FedAvg", "client_num_in_total": 2, "client_num_per_round": 2,
                       "comm_round": 1, "epochs": 1, "batch_size": 8, "client_optimizer": "adamw",
                       "learning_rate": 8e-4, "weight_decay": 0.0},
        "validation_args": {"frequency_of_the_test": 1}, "device_args": {"using_gpu": False},
        "comm_args": {"backend": "sp"},
        "tracking_args": {"enable_tracking": False, "enable_wandb": False, "log_file_dir": "./logs"},
        "fedpft_args": {"fedpft_method": "fedpft", "fedpft_public_size": 60, "fedpft_max_length": 32,
                        "fedpft_retained_layers": [0],  # a 2-layer test model: compress the last layer
                        "fedpft_layer_align_steps": 2},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize("bench, message", [
    ({"methods": ["fedsgd"]}, "bench.methods"),
    ({"partitions": ["dirichlet:abc"]}, "alpha must be a number"),
    ({"partitions": ["quantity"]}, "expected homo, hetero"),
    ({"seeds": []}, "non-empty list"),
    ({"cell_timeout": 0}, "cell_timeout"),
    ({"threads": 0}, "bench.threads"),
    ({"jobs": 0}, "bench.jobs=0 is not allowed"),
    ({"jobs": "two"}, "bench.jobs='two' is not allowed"),
    ({"colour": "blue"}, "unknown bench key"),
    ({"variants": {"fedpft": {"method": "fedpft"}}}, "expected a new name"),
    ({"variants": {"fedpft_x": {"method": "fedsgd"}}}, r"bench.variants.fedpft_x: expected \{method"),
    ({"variants": {"fedpft_x": {"method": "fedpft", "set": {"fedpft_align_interval": 0}}}},
     r"bench.variants.fedpft_x: fedpft_align_interval=0 is not allowed"),
    ({"methods": ["fedpft_x"]}, "bench.methods"),
])
def test_load_spec_rejects_bad_bench_sections(tmp_path, bench, message):
    with pytest.raises(ConfigError, match=message):
        load_spec(_bench_yaml(tmp_path, **bench))


def test_load_spec_needs_a_bench_section(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text("common_args:\n  training_type: simulation\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="bench:"):
        load_spec(path)


def test_matrix_skips_missing_tasks_and_names_cells(tmp_path):
    spec = load_spec(_bench_yaml(tmp_path, tasks=["rotten_tomatoes", str(tmp_path / "nope.csv")],
                                 partitions=["homo", "hetero"], seeds=[0, 1]))

    cells, notes = plan_cells(spec, methods=["fedpft_n"])

    assert len(cells) == 1 * 2 * 2  # one task x two partitions x two seeds
    assert {c.partition for c in cells} == {"homo", "hetero:1"}
    assert cells[0].id == "minilm-l6-rotten_tomatoes-homo-s0-fedpft_n"
    assert len(notes) == 1 and "skipped" in notes[0]


def test_cell_configs_select_the_method_where_each_runner_reads_it(tmp_path):
    spec = load_spec(_bench_yaml(tmp_path))

    fedpft = cell_config(spec, Cell("fedot", "trec6", "hetero:0.5", 3, "minilm-l6"), tmp_path)
    fedprox = cell_config(spec, Cell("fedprox", "trec6", "homo", 0, "minilm-l6"), tmp_path)

    assert fedpft["fedpft_args"]["fedpft_method"] == "fedot"
    assert fedpft["train_args"]["federated_optimizer"] == "FedAvg"   # FedML's transport for FedPFT
    assert (fedpft["data_args"]["partition_method"], fedpft["data_args"]["partition_alpha"]) == ("hetero", 0.5)
    assert fedpft["common_args"]["random_seed"] == 3 and fedpft["data_args"]["dataset"] == "trec6"
    assert fedprox["train_args"]["federated_optimizer"] == "FedProx"
    assert fedprox["train_args"]["learning_rate"] == 5e-5 and fedprox["train_args"]["client_optimizer"] == "adam"
    assert fedprox["data_args"]["data_cache_dir"] == str(tmp_path)


def test_baseline_args_nested_under_a_method_apply_to_that_baseline_only(tmp_path):
    spec = load_spec(_bench_yaml(tmp_path, baseline_args={"learning_rate": 5e-5, "fednova": {"learning_rate": 0.05}}))

    fednova = cell_config(spec, Cell("fednova", "trec6", "homo", 0, "minilm-l6"), tmp_path)["train_args"]
    fedavg = cell_config(spec, Cell("fedavg", "trec6", "homo", 0, "minilm-l6"), tmp_path)["train_args"]

    assert (fednova["federated_optimizer"], fednova["learning_rate"]) == ("FedNova", 0.05)
    assert fedavg["learning_rate"] == 5e-5 and "fednova" not in fedavg


def test_smoke_applies_its_overrides(tmp_path):
    (tmp_path / "vit").mkdir()
    path = _bench_yaml(tmp_path, methods=["fedpft", "fedot", "fedavg", "fedprox"],
                       smoke={"methods": 2, "set": {"comm_round": 2, "fedpft_neuron_align_steps": 1}},
                       vision={"model": "vit", "task": "digits", "methods": ["fedpft"]})

    spec = load_spec(path, smoke=True)
    full = load_spec(path)

    assert spec.methods == ["fedpft", "fedot"] and spec.vision == {}  # text only
    assert full.vision["model"] == str(tmp_path / "vit")  # relative to the bench yaml
    assert [c.suite for c in plan_cells(full)[0]].count("vision") == 1
    assert spec.base["train_args"]["comm_round"] == 2
    assert spec.base["fedpft_args"]["fedpft_neuron_align_steps"] == 1


def test_records_summarise_rounds_and_gaps_pair_cells():
    cell = Cell("fedpft", "trec6", "homo", 0, "m")
    rows = [{"round": 1, "accuracy": 0.6, "upload_bytes": 10, "download_bytes": 20, "align_seconds": 2.0,
             "sub_accuracy": 0.5, "macro_f1": 0.55},
            {"round": 0, "accuracy": 0.7, "upload_bytes": 30, "download_bytes": 20, "align_seconds": 0.0,
             "layer_align_seconds": 5.0, "grad_rel_error_init": 0.2}]

    record = cell_record(cell, rows, 12.0)

    assert (record["final_accuracy"], record["best_accuracy"], record["sub_accuracy"]) == (0.6, 0.7, 0.5)
    assert record["upload_bytes_per_client_round"] == 20 and record["server_align_seconds"] == 7.0
    assert record["accuracy_per_round"] == [0.7, 0.6]
    other = dict(record, method="fedot", final_accuracy=0.5)
    assert paired_gap([record, other], "fedpft", "fedot") == pytest.approx(0.1)


def test_target_gaps_say_how_many_pairs_and_their_standard_error():
    records = [dict(method=m, task=t, partition="homo", seed=s, final_accuracy=acc, suite="text", model="m",
                    upload_bytes_per_client_round=1, wall_seconds=1.0, neuron_align_seconds=0.0,
                    rounds=1)
               for t, s, gap in (("trec6", 0, 0.10), ("trec6", 1, 0.02), ("rotten_tomatoes", 0, 0.06))
               for m, acc in (("fedpft", 0.5 + gap), ("fedot", 0.5))]

    row = next(r for r in targets(records, {}) if r["target"].startswith("FedPFT - FedOT accuracy (final"))

    assert row["measured"] == pytest.approx(6.0) and row["met"]
    assert row["detail"] == "3 pairs, s.e. 2.3"   # sd 0.04 / sqrt(3)


def test_ablation_order_compares_text_cells_only():
    base = dict(partition="homo", seed=0, model="m", upload_bytes_per_client_round=1, wall_seconds=1.0,
                neuron_align_seconds=0.0, rounds=1)
    records = [dict(base, method=m, task="trec6", suite="text", final_accuracy=acc)
               for m, acc in (("fedpft", 0.80), ("fedpft_b", 0.78), ("fedpft_d", 0.77), ("fedpft_n", 0.75))]
    records.append(dict(base, method="fedpft", task="fashion_mnist", suite="vision", final_accuracy=0.40))

    row = next(r for r in targets(records, {}) if r["target"].startswith("ablation order"))

    assert row["met"] and row["measured"] == "fedpft 80.0 fedpft_b 78.0 fedpft_d 77.0 fedpft_n 75.0"


@pytest.mark.process
def test_tiny_bench_end_to_end_writes_results_and_resumes(minilm_2layer, tmp_path, monkeypatch):
    # Prepare: 4 cells (FedPFT_N and FedPFT_B, IID and Dirichlet), 2 side by side sharing one cache;
    # 2-layer MiniLM; FedML's baselines: test_baselines.py
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = load_spec(_bench_yaml(tmp_path, model=str(minilm_2layer), methods=["fedpft_n", "fedpft_b"],
                                 partitions=["homo", "hetero:1"], jobs=2))
    out = tmp_path / "out"

    # Execute: the Dirichlet part first, then the whole suite (which runs only the IID part)
    part = run_bench(spec, out, partitions=["hetero:1"], progress=False)
    part_records = json.loads((out / "results.json").read_text())
    summary = run_bench(spec, out, progress=False)

    # Assert: every cell finished; the first part's records stayed in results.json; the records carry every required key; report files exist
    assert part["ran"] == 2 and part["finished"] == 2 and len(part_records) == 2
    assert summary["failures"] == {} and summary["ran"] == 2 and summary["finished"] == 4
    records = json.loads((out / "results.json").read_text())
    assert all(r in records for r in part_records)
    assert sorted((r["method"], r["partition"]) for r in records) == [
        ("fedpft_b", "hetero:1"), ("fedpft_b", "homo"), ("fedpft_n", "hetero:1"), ("fedpft_n", "homo")]
    for record in records:
        missing = [k for k in REQUIRED if k not in record]
        assert not missing, missing
        assert record["client_epoch_seconds"] > 0 and record["client_peak_mem_mb"] > 0
        assert 0 < record["upload_bytes_per_client_round"] < 1_000_000  # LoRA + head only
        assert record["grad_rel_error_final"] is not None
    # the layer-aligned sub-FM was distilled by one FedPFT_B cell and loaded from the cache by the other
    aligned = sorted(r["layer_align_seconds"] > 0 for r in records if r["method"] == "fedpft_b")
    assert aligned == [False, True]
    assert len(list((out / "cache").rglob("sub_models/*.safetensors"))) == 1
    for name in ("results.csv", "results.md", "accuracy_per_round.png", "client_cost.png"):
        assert (out / name).exists(), name
    report = (out / "results.md").read_text()
    for section in ("## Targets", "## Final accuracy per task, homo", "## Mean accuracy over the text tasks"):
        assert section in report, section

    # Execute again: nothing is run a second time
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/metrics.jsonl")}
    again = run_bench(spec, out, progress=False)

    assert again["ran"] == 0 and again["finished"] == 4
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/metrics.jsonl")}


def test_variants_run_their_method_with_their_settings(tmp_path):
    variants = {"fedpft_mean_abs": {"method": "fedpft", "set": {"fedpft_align_statistic": "mean_abs"}},
                "fedpft_p08": {"method": "fedpft", "set": {"fedpft_align_update_ratio": 0.8}}}
    spec = load_spec(_bench_yaml(tmp_path, methods=["fedpft", "fedpft_mean_abs", "fedpft_p08"], variants=variants))
    cells, _ = plan_cells(spec)
    configs = {c.method: cell_config(spec, c, tmp_path / "cache")["fedpft_args"] for c in cells}
    assert {m: (c["fedpft_method"], c.get("fedpft_align_statistic", "apoz"), c.get("fedpft_align_update_ratio", 0.5))
            for m, c in configs.items()} == {"fedpft": ("fedpft", "apoz", 0.5),
                                             "fedpft_mean_abs": ("fedpft", "mean_abs", 0.5),
                                             "fedpft_p08": ("fedpft", "apoz", 0.8)}
    assert len({c.id for c in cells}) == 3



@pytest.mark.parametrize("option, message", [(["--jobs", "0"], "--jobs 0: expected an integer >= 1"),
                                             (["--threads", "0"], "--threads 0: expected an integer >= 1"),
                                             (["--tasks", "imdb"], "--tasks: ['imdb'] not in the suite"),
                                             (["--seeds", "0,x"], "--seeds 0,x: expected integers separated by"),
                                             (["--seeds", ","], "--seeds ,: expected integers")])
def test_bench_cli_bad_option_exits_2_with_one_line_and_runs_nothing(tmp_path, capsys, option, message):
    from fedpft_algo import cli

    code = cli.main(["bench", "--cf", str(_bench_yaml(tmp_path)), "--out", str(tmp_path / "out"), *option])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_vision_cells_without_the_model_directory_are_skipped_with_a_note(tmp_path):
    spec = load_spec(_bench_yaml(tmp_path, vision={"model": "models/vit-small", "task": "digits"}))

    cells, notes = plan_cells(spec)

    assert cells and all(c.suite == "text" for c in cells)
    assert any("vision cells skipped" in n and "fedpft pretrain-vit --out" in n for n in notes), notes


def test_seeds_option_replaces_the_suites_seeds(tmp_path, capsys):
    from fedpft_algo import cli

    code = cli.main(["bench", "--cf", str(_bench_yaml(tmp_path)), "--out", str(tmp_path / "out"),
                     "--seeds", "3,1,3", "--report-only"])

    assert code == 0
    assert "0 of 4 cell(s) finished" in capsys.readouterr().out   # 2 methods x seeds {1, 3}


def _finished(cell_id, method, task, seed, suite="text"):
    values = dict.fromkeys(REQUIRED, 1.0)
    values.update(cell=cell_id, method=method, task=task, partition="homo", seed=seed, model="m", suite=suite,
                  accuracy_per_round=[0.5, 0.6], config_hash="0")
    return values


def test_report_covers_the_whole_suite_and_results_json_keeps_every_cell(tmp_path):
    # Prepare: a suite whose vision model is missing on this machine; cells finished earlier: a text cell
    # and a vision cell of the suite, and a seed-5 cell of another call (--seeds)
    spec = load_spec(_bench_yaml(tmp_path, methods=["fedpft_n"], vision={"model": "models/vit-small"}))
    out = tmp_path / "out"
    out.mkdir()
    finished = [_finished("minilm-l6-rotten_tomatoes-homo-s0-fedpft_n", "fedpft_n", "rotten_tomatoes", 0),
                _finished("vit-small-fashion_mnist-homo-s0-fedpft_n", "fedpft_n", "fashion_mnist", 0, "vision"),
                _finished("minilm-l6-rotten_tomatoes-homo-s5-fedpft_n", "fedpft_n", "rotten_tomatoes", 5)]
    (out / "results.json").write_text(json.dumps(finished))

    # Execute: rewrite the report only
    run_bench(spec, out, execute=False, progress=False)

    # Assert: nothing lost from results.json; the tables show the suite's two cells, the vision one included
    assert [r["cell"] for r in json.loads((out / "results.json").read_text())] == [r["cell"] for r in finished]
    rows = (out / "results.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and sum("fashion_mnist" in r for r in rows) == 1
    assert "## fashion_mnist, homo" in (out / "results.md").read_text()


def test_a_seeds_call_reports_the_yamls_other_seeds_too(tmp_path, capsys):
    # Prepare: the suite's seed-0 cell finished by an earlier call
    from fedpft_algo import cli

    path = _bench_yaml(tmp_path, methods=["fedpft_n"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(
        [_finished("minilm-l6-rotten_tomatoes-homo-s0-fedpft_n", "fedpft_n", "rotten_tomatoes", 0)]))

    # Execute: a call for seed 1 only
    code = cli.main(["bench", "--cf", str(path), "--out", str(out), "--seeds", "1", "--report-only"])

    # Assert: it plans seed 1 alone, and the tables still show the seed-0 cell
    assert code == 0
    assert "0 of 1 cell(s) finished" in capsys.readouterr().out
    rows = (out / "results.csv").read_text().splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith("fedpft_n,rotten_tomatoes,homo,0,")


def test_client_options_pinned_at_their_old_defaults_keep_the_finished_cells_hash():
    # the shipped yamls pinned the client options at the defaults their cells ran with before issue 15
    from fedpft_algo.bench.spec import config_hash

    def config(**fedpft):
        return {"fedpft_args": {"fedpft_ffn_keep_ratio": 0.25, **fedpft}, "common_args": {"random_seed": 0}}

    pinned = config(fedpft_client_backbone_dropout=True, fedpft_shared_lora_dropout=False)
    changed = config(fedpft_client_backbone_dropout=False, fedpft_shared_lora_dropout=True)

    assert config_hash(pinned) == config_hash(config()) != config_hash(changed)


def test_a_bench_folder_resumes_wherever_it_lies_and_old_records_still_count(tmp_path):
    # Prepare: a cell finished in folder a (new-style hash) and one recorded with the old, path-bound hash
    from fedpft_algo.bench.runner import _finished

    spec = load_spec(_bench_yaml(tmp_path))
    cell = plan_cells(spec)[0][0]
    in_a, in_b = cell_config(spec, cell, tmp_path / "a" / "cache"), cell_config(spec, cell, tmp_path / "b" / "cache")
    new_record = {"config_hash": config_hash(in_a)}
    old_record = {"config_hash": config_hash(in_b, with_cache_dir=True)}

    # Assert: the new record counts in folder b too; the old one in its own folder only; a changed setting never
    assert _finished(new_record, in_b) and _finished(old_record, in_b) and not _finished(old_record, in_a)
    changed = cell_config(spec, dataclasses.replace(cell, seed=7), tmp_path / "b" / "cache")
    assert not _finished(new_record, changed) and not _finished(None, in_b)


def test_tasks_option_selects_vision_cells_too(tmp_path):
    (tmp_path / "vit").mkdir()
    spec = load_spec(_bench_yaml(tmp_path, methods=["fedpft_n"], vision={"model": str(tmp_path / "vit")}))

    assert {c.task for c in plan_cells(spec)[0]} == {"rotten_tomatoes", "fashion_mnist"}
    assert {c.task for c in plan_cells(spec, tasks=["rotten_tomatoes"])[0]} == {"rotten_tomatoes"}
    assert {c.task for c in plan_cells(spec, tasks=["fashion_mnist"])[0]} == {"fashion_mnist"}


SHIPPED = Path(__file__).resolve().parents[2] / "fedml_config"


@pytest.mark.parametrize("name, cells", [("bench", 72), ("bench_study", 7), ("bench_budget", 14), ("bench_lr", 48),
                                         ("bench_variants", 28), ("bench_base", 32), ("bench_base_variants", 24)])
def test_shipped_bench_yamls_load_and_plan(name, cells):
    spec = load_spec(SHIPPED / f"{name}.yaml")

    assert len(plan_cells(spec, runnable_only=False)[0]) == cells


def test_bench_base_smoke_is_one_small_cell():
    spec = load_spec(SHIPPED / "bench_base.yaml", smoke=True)

    cells = plan_cells(spec, runnable_only=False)[0]
    assert len(cells) == 1 and cells[0].model == "mpnet-base"


def test_bench_lr_resumes_the_default_suites_cells(tmp_path):
    """bench_lr.yaml says: given the default suite's --out, the cells that suite ran are not run again."""
    default, lr = load_spec(SHIPPED / "bench.yaml"), load_spec(SHIPPED / "bench_lr.yaml")
    hashes = {c.id: config_hash(cell_config(default, c, tmp_path)) for c in plan_cells(default, runnable_only=False)[0]}

    shared = [c for c in plan_cells(lr, runnable_only=False)[0] if c.id in hashes]

    assert len(shared) == 12 and all(config_hash(cell_config(lr, c, tmp_path)) == hashes[c.id] for c in shared)


def test_a_probe_made_with_other_client_settings_is_run_again(tmp_path):
    """Resuming a bench whose yaml changed what a client costs (here the keep ratio) re-probes that client kind;
    a probe whose saved settings match is kept, and so is a probe of a client the change does not touch."""
    from fedpft_algo.bench.probes import _probe_settings, plan_probes

    spec = load_spec(_bench_yaml(tmp_path, methods=["fedpft", "fedpetuning"]))
    cells = plan_cells(spec)[0]
    probe_task, wanted = plan_probes(spec, cells, {}, execute=True)
    assert sorted(wanted) == ["minilm-l6|full_lora", "minilm-l6|sub_model"]
    probes = {key: {"epoch_seconds": 1.0, "settings": _probe_settings(spec, cell, probe_task)}
              for key, cell in wanted.items()}
    assert plan_probes(spec, cells, probes, execute=True)[1] == {}

    text = (tmp_path / "bench.yaml").read_text(encoding="utf-8")
    (tmp_path / "bench.yaml").write_text(text.replace("fedpft_layer_align_steps: 2",
                                                      "fedpft_layer_align_steps: 2\n  fedpft_ffn_keep_ratio: 0.75"),
                                         encoding="utf-8")
    changed = load_spec(tmp_path / "bench.yaml")
    assert sorted(plan_probes(changed, plan_cells(changed)[0], probes, execute=True)[1]) == ["minilm-l6|sub_model"]
    legacy = {key: {k: v for k, v in probe.items() if k != "settings"} for key, probe in probes.items()}
    assert len(plan_probes(spec, cells, legacy, execute=True)[1]) == 2   # saved before settings were: measured again


def test_variants_that_change_the_clients_cost_get_probes_of_their_own(tmp_path):
    from fedpft_algo.bench.probes import probe_key

    variants = {"fedpft_keep05": {"method": "fedpft", "set": {"fedpft_ffn_keep_ratio": 0.5}},
                "fedpft_b16": {"method": "fedpft", "set": {"batch_size": 16}},
                "fedpft_lr16": {"method": "fedpft", "set": {"learning_rate": 0.0016}},
                "fedpft_t1": {"method": "fedpft", "set": {"fedpft_align_interval": 1}},
                "fedpft_bf16": {"method": "fedpft", "set": {"fedpft_precision": "bf16"}}}
    spec = load_spec(_bench_yaml(tmp_path, methods=["fedpft", *variants], variants=variants))

    keys = {c.method: probe_key(spec, c) for c in plan_cells(spec)[0]}

    assert keys == {"fedpft": "minilm-l6|sub_model", "fedpft_lr16": "minilm-l6|sub_model",
                    "fedpft_t1": "minilm-l6|sub_model", "fedpft_keep05": "minilm-l6|sub_model|fedpft_keep05",
                    "fedpft_b16": "minilm-l6|sub_model|fedpft_b16",
                    "fedpft_bf16": "minilm-l6|sub_model|fedpft_bf16"}
