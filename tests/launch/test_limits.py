"""Pre-flight limits (``fedpft_algo.launch.limits``): a value the model, the data or the optimiser cannot
honour exits 2 with one line naming the key, the value and the limit, before any process starts and
without a run directory; the values just inside each limit pass ``fedpft run --check``.

Every case goes through the real ``fedpft run`` (``cli.main``) on the shipped configs, the packaged
MiniLM-L6 (512 positions, hidden 384, FFN 1536) and real data; with the fake participant in place,
anything that did start would show up as a run directory.
"""
import re
from pathlib import Path

import pytest
import yaml

from fedpft_algo import cli
from fedpft_algo import launch as launcher
from fedpft_algo.launch import processes
from tests.helpers import pythonpath

TESTS_DIR = Path(__file__).resolve().parents[1]
CONFIG_DIR = TESTS_DIR.parent / "fedml_config"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """cwd = tmp_path (the default run directory would be tmp_path/runs); the fake participant."""
    monkeypatch.setenv("PYTHONPATH", pythonpath())
    monkeypatch.setattr(processes, "PARTICIPANT_MODULE", "fake_participant")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _long_texts(tmp_path: Path) -> str:
    """The issue's data: a CSV whose texts run to ~900 tokens."""
    rows = [f"{'a long and winding review of the film ' * 130} number {i},{i % 2}" for i in range(200)]
    (tmp_path / "long.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return str(tmp_path / "long.csv")


def _model_dir(tmp_path: Path, model_type: str, **config) -> str:
    """A model directory with only its config.json: all that pre-flight reads of a model."""
    from tests.conftest import tiny_model_config

    model_config = tiny_model_config(model_type)
    for key, value in config.items():
        setattr(model_config, key, value)
    model_config.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def _decoder_dir(tmp_path: Path) -> str:
    """A tiny LLaMA decoder's config.json with the packaged MiniLM tokenizer: all that pre-flight reads of it."""
    from tests.conftest import tiny_model_config

    from fedpft_algo.models import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    model_config = tiny_model_config("llama")
    model_config.vocab_size, model_config.architectures = len(tokenizer), ["LlamaForCausalLM"]
    model_config.max_position_embeddings = 256
    model_config.save_pretrained(tmp_path / "decoder")
    tokenizer.save_pretrained(tmp_path / "decoder")
    return str(tmp_path / "decoder")


CONFIG = str(CONFIG_DIR / "simulation_mpi.yaml")
# id -> (--set values (a callable of tmp_path gives them), what stderr must say after "config file <yaml>: ")
LIMITS = {
    "max_length over the model's positions": (
        lambda t: [f"dataset={_long_texts(t)}", "max_train_examples=null", "fedpft_max_length=1000"],
        r"fedpft_args\.fedpft_max_length=1000 is not allowed: expected at most 512, the longest input model "
        r"minilm-l6 takes \(max_position_embeddings 512\)"),
    "max_length 513": (["fedpft_max_length=513"], r"fedpft_args\.fedpft_max_length=513 .*expected at most 512"),
    "max_length 1": (["fedpft_max_length=1"], r"fedpft_args\.fedpft_max_length=1 .*expected an integer >= 2"),
    "roberta positions after the padding index": (
        lambda t: [f"model={_model_dir(t, 'roberta', max_position_embeddings=66, pad_token_id=1)}",
                   "fedpft_max_length=65"],
        r"fedpft_args\.fedpft_max_length=65 is not allowed: expected at most 64, .*max_position_embeddings 66"),
    "learning_rate negative": (["learning_rate=-0.001"],
                               r"train_args\.learning_rate=-0\.001 is not allowed: expected a finite number > 0"),
    "learning_rate 0": (["learning_rate=0"], r"train_args\.learning_rate=0 is not allowed: expected a finite"),
    "learning_rate nan": (["learning_rate=.nan"], r"train_args\.learning_rate=nan is not allowed"),
    "learning_rate inf": (["learning_rate=.inf"], r"train_args\.learning_rate=inf is not allowed"),
    "learning_rate text": (["learning_rate=fast"], r"train_args\.learning_rate='fast' is not allowed"),
    "weight_decay negative": (["weight_decay=-0.01"],
                              r"train_args\.weight_decay=-0\.01 is not allowed: expected a finite number >= 0"),
    "epochs 0": (["epochs=0"], r"train_args\.epochs=0 is not allowed: expected an integer >= 1"),
    "epochs 1.5": (["epochs=1.5"], r"train_args\.epochs=1\.5 is not allowed: expected an integer >= 1"),
    "batch_size 0": (["batch_size=0"], r"train_args\.batch_size=0 is not allowed: expected an integer >= 1"),
    "partition_method": (["partition_method=iid"],
                         r"data_args\.partition_method='iid' is not allowed: expected one of hetero, homo"),
    "partition_alpha 0": (["partition_alpha=0"], r"data_args\.partition_alpha=0 is not allowed: expected a finite "
                                                 r"number > 0 \(the Dirichlet concentration"),
    "partition_alpha negative": (["partition_alpha=-1"], r"data_args\.partition_alpha=-1 is not allowed"),
    "random_seed negative": (["random_seed=-1"],
                             r"common_args\.random_seed=-1 is not allowed: expected an integer in \[0, 4294967295\]"),
    "random_seed 2**32": (["random_seed=4294967296"], r"common_args\.random_seed=4294967296 is not allowed"),
    "max_train_examples 0": (["max_train_examples=0"], r"data_args\.max_train_examples=0 is not allowed: expected "
                                                       r"an integer >= 1, or null for the whole split"),
    "max_test_examples text": (["max_test_examples=all"], r"data_args\.max_test_examples='all' is not allowed"),
    "frequency_of_the_test 0": (["frequency_of_the_test=0"],
                                r"validation_args\.frequency_of_the_test=0 is not allowed: expected an integer >= 1"),
    "lora_r over the hidden size": (["fedpft_lora_r=385"], r"fedpft_args\.fedpft_lora_r=385 is not allowed: "
                                                           r"expected at most the hidden size 384 of model minilm-l6"),
    "keep ratio that keeps no neuron": (["fedpft_ffn_keep_ratio=0.0003"],
                                        r"fedpft_args\.fedpft_ffn_keep_ratio=0\.0003 is not allowed: expected more "
                                        r"than 0\.00033: this keeps no neuron of the 1536 in each FFN"),
    "update ratio that updates no neuron": (["fedpft_align_update_ratio=0.001"],
                                            r"fedpft_args\.fedpft_align_update_ratio=0\.001 is not allowed: expected "
                                            r"more than 0\.0013: this updates no neuron of the 384"),
    "public_size over the public set": (["fedpft_public_size=20000"],
                                        r"fedpft_args\.fedpft_public_size=20000 is not allowed: expected at most "
                                        r"\d+, the examples of public set 'convention_speeches' that are not in task "
                                        r"'rotten_tomatoes'"),
    "text model on an image task": (["dataset=digits"], r"model_args\.model='minilm-l6' is not allowed: expected an "
                                                        r"image model \(model_type vit\) for the image task 'digits'"),
    "image model on a text task": (lambda t: [f"model={_model_dir(t, 'vit')}"],
                                   r"model_args\.model='.*model' is not allowed: expected a text model for the text "
                                   r"task 'rotten_tomatoes' \(this model's type is vit\)"),
    "image channels the model cannot take": (
        lambda t: ["dataset=digits", f"model={_model_dir(t, 'vit', num_channels=4)}"],
        r"model_args\.model='.*model' is not allowed: expected a model for 1-channel images: task 'digits' has 1 "
        r"channels, the model takes 4"),
    # decoders (fedpft_algo.tasks): the task kind must fit the model, the task must fit the tokenizer
    "a decoder given a classification head": (
        lambda t: [f"model={_decoder_dir(t)}", "fedpft_task_kind=classification"],
        r"fedpft_args\.fedpft_task_kind='classification' is not allowed: expected auto or instruction or "
        r"language_modeling: model .*decoder \(type llama\) is a decoder \(causal LM\)"),
    "an encoder given an instruction task": (
        ["fedpft_task_kind=instruction"],
        r"fedpft_args\.fedpft_task_kind='instruction' is not allowed: expected auto or classification: model "
        r"minilm-l6 \(type bert\) is not a decoder"),
    "an image model given language modelling": (
        lambda t: ["dataset=digits", f"model={_model_dir(t, 'vit')}", "fedpft_task_kind=language_modeling"],
        r"fedpft_args\.fedpft_task_kind='language_modeling' is not allowed: expected auto or classification"),
    "a label answer that tokenises to nothing": (
        lambda t: [f"model={_decoder_dir(t)}", "fedpft_label_answers=['bad', '\u200b']"],
        r"label answer '\\u200b' tokenises to nothing: give every label a non-empty answer text "
        r"\(fedpft_label_answers\)"),
    "a prompt longer than max_length": (
        lambda t: [f"model={_decoder_dir(t)}", "fedpft_max_length=32"],
        r"fedpft_max_length=32 is too short: (train|test) example \d+ of task 'rotten_tomatoes' is \d+ tokens as "
        r"prompt \+ answer \(raise fedpft_max_length to \d+, or shorten fedpft_prompt_template\)"),
}


def run_cli(capsys, *argv):
    code = cli.main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", LIMITS)
def test_a_value_beyond_a_limit_exits_2_with_one_line_and_no_run_dir(case, isolated, capsys):
    overrides, message = LIMITS[case]
    overrides = overrides(isolated) if callable(overrides) else overrides
    code, out, err = run_cli(capsys, "--cf", CONFIG, "--set", *overrides)
    assert code == 2, err
    assert err.startswith(f"fedpft: error: config file {CONFIG}: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert out == "" and not (isolated / "runs").exists()


# values at the limit: each passes the whole pre-flight (--check), so the limits are not stricter than the run
AT_THE_LIMIT = {
    "max_length 512": ["fedpft_max_length=512"],
    "lora_r = hidden size": ["fedpft_lora_r=384"],
    "one neuron kept and updated": ["fedpft_ffn_keep_ratio=0.0007", "fedpft_align_update_ratio=1.0"],
    "YAML's 1e-3 (a string) as learning rate, no weight decay": ["learning_rate=1e-3", "weight_decay=0"],
    "homo ignores partition_alpha": ["partition_method=homo", "partition_alpha=-1"],
    "largest seed": ["random_seed=4294967295"],
}


@pytest.mark.parametrize("case", AT_THE_LIMIT)
def test_a_value_at_the_limit_passes_the_check(case, isolated, capsys):
    code, out, err = run_cli(capsys, "--check", "--cf", CONFIG, "--set", *AT_THE_LIMIT[case])
    assert code == 0 and err == "", err
    assert out.startswith(f"fedpft: check passed for {CONFIG}: nothing was started")
    assert not (isolated / "runs").exists()


def test_the_sp_backend_does_not_need_frequency_of_the_test(isolated, capsys):
    config = yaml.safe_load((CONFIG_DIR / "simulation_sp.yaml").read_text())
    del config["validation_args"]
    (isolated / "sp.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli(capsys, "--check", "--cf", isolated / "sp.yaml")
    assert code == 0, err
    config["comm_args"]["backend"] = "MPI"
    (isolated / "mpi.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli(capsys, "--check", "--cf", isolated / "mpi.yaml")
    assert code == 2 and "validation_args.frequency_of_the_test is missing: expected an integer >= 1" in err


def test_check_prints_what_would_start_and_creates_nothing(isolated, capsys):
    code, out, err = run_cli(capsys, "--check", "--cf", CONFIG, "--set", "comm_round=2", "client_num_in_total=4",
                             "fedpft_align_interval=1", "--out", isolated / "try")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"fedpft: check passed for {CONFIG}: nothing was started or written"
    rows = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:] if not line.startswith("  run dir")}
    assert rows["topology"] == "simulation/MPI: 3 processes (server + 2 clients)"
    assert rows["model"] == "minilm-l6 (bert, 6 layers, hidden 384, max length 64 of 512)"
    assert rows["task"] == ("rotten_tomatoes (text, 2 classes, 2000 train / 500 test examples); "
                            "public set 1500 examples")
    assert rows["clients"] == "4 in total, 2 per round, hetero (alpha 1)"
    assert rows["method"] == "fedpft, 2 rounds"
    assert lines[-1] == f"  run dir   {isolated / 'try'} (created when the run starts)"
    assert list(isolated.iterdir()) == []


def test_check_refuses_what_the_run_refuses(isolated, capsys):
    (isolated / "out").mkdir()
    (isolated / "out" / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "--check", "--cf", CONFIG, "--out", isolated / "out")
    assert code == 2 and "the directory exists and is not empty" in err
    code, _, err = run_cli(capsys, "--check", "--cf", CONFIG, "--set", "comm_round=0")
    assert code == 2 and "train_args.comm_round=0" in err


def test_check_with_resume_checks_the_checkpoint_and_changes_nothing(isolated, capsys):
    import torch

    from fedpft_algo.rundir import checkpoint

    run_dir = isolated / "stopped"
    run_dir.mkdir()
    config = launcher.plan_run(CONFIG, cwd=isolated).config
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    code, out, err = run_cli(capsys, "--check", "--resume", run_dir)
    assert code == 2 and "no checkpoint in" in err
    checkpoint.save(run_dir, 3, {"w": torch.zeros(1)},
                    {"config_fingerprint": checkpoint.config_fingerprint(config), "history": []})
    before = sorted(p.name for p in run_dir.rglob("*"))
    code, out, err = run_cli(capsys, "--check", "--resume", run_dir)
    assert code == 0, err
    assert "  method    fedpft, 8 rounds, resuming after round 3" in out.splitlines()
    assert out.splitlines()[-1] == f"  run dir   {run_dir} (resumed)"
    assert sorted(p.name for p in run_dir.rglob("*")) == before   # no config.resume.yaml, no status cleared


def test_an_instruction_task_without_a_label_column_exits_2_with_one_line(isolated, capsys):
    (isolated / "texts.csv").write_text("text,source\n" + "\n".join(f"review number {i} of a film,web"
                                                                  for i in range(40)) + "\n")
    code, out, err = run_cli(capsys, "--check", "--cf", CONFIG, "--set", f"model={_decoder_dir(isolated)}",
                             f"dataset={isolated / 'texts.csv'}")
    assert code == 2 and err.startswith("fedpft: error: ") and err.count("\n") == 1, err
    assert "no label column found among ['text', 'source']: pass label_column" in err
    assert out == "" and not (isolated / "runs").exists()


def test_a_decoder_at_the_prompt_length_limit_passes_the_check(isolated, capsys):
    from fedpft_algo.config import FedPFTConfig
    from fedpft_algo.data import load_task
    from fedpft_algo.data.instruction import label_answers, longest_instruction
    from fedpft_algo.models import load_tokenizer

    decoder = _decoder_dir(isolated)
    task, config = load_task("rotten_tomatoes", max_train=2000, max_test=500, seed=0), FedPFTConfig()
    answers = label_answers(task.label_names)
    longest = max(longest_instruction(load_tokenizer(decoder), getattr(task, f"{split}_inputs"),
                                      getattr(task, f"{split}_labels"), config.prompt_template, answers)[1]
                  for split in ("train", "test"))
    code, out, err = run_cli(capsys, "--check", "--cf", CONFIG, "--set", f"model={decoder}",
                             f"fedpft_max_length={longest}")
    assert code == 0 and err == "", err
    code, out, err = run_cli(capsys, "--check", "--cf", CONFIG, "--set", f"model={decoder}",
                             f"fedpft_max_length={longest - 1}")
    assert code == 2 and f"raise fedpft_max_length to {longest}" in err
