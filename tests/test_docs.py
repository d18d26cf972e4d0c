"""Every ``fedpft`` command written in README.md and examples/ works as written, so the docs and the
command line cannot drift apart.

Commands are taken from fenced code blocks (``\\`` continuations joined, ``#`` comments dropped) and
inline code spans of the Markdown files, and from comments of the other files in examples/ (where a
subcommand is followed by an option). Spans with ``…`` are abbreviations, a bare ``fedpft run`` is a
name: neither is a command. Each command runs in-process through ``fedpft_algo.cli.main``, from the
repository root, in its check-only or cheapest mode: ``run`` and ``bench`` with ``--check`` (their
``--out`` moved to a temporary directory), ``predict`` for real on a finished run, every other
subcommand parsed by the real argument parser. ``runs/<run>`` stands for a run directory made here with
the project's own code: a run stopped after 3 of 8 rounds for ``run --resume``, a finished run (the
FM's LoRA + head as the server saves them) otherwise. Any other ``<placeholder>`` needs an entry in
:data:`PLACEHOLDERS`.

Two commands also run as the user types them, in a subprocess, to show that the console carries only
the tool's own lines (no FedML ``pkg_resources`` warning, no ``transformers`` load report or warnings).
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedpft_algo import cli
from fedpft_algo import launch as launcher

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "examples").iterdir() if p.suffix in (".md", ".yaml", ".py"))]
PROGRAMS = ("fedpft", ".venv/bin/fedpft")
PLACEHOLDERS = {"fedml_config/<name>.yaml": "fedml_config/simulation_sp.yaml"}

pytestmark = pytest.mark.timeout(600)


# ---------------------------------------------------------------------- finding the commands
def _command(text: str):
    """``text`` as an argument list without the program, if it is a ``fedpft`` command line."""
    try:
        words = shlex.split(text.replace("$ ", "", 1) if text.startswith("$ ") else text, comments=True)
    except ValueError:
        return None
    if len(words) < 3 or words[0] not in PROGRAMS or "…" in text:
        return None
    return words[1:]


def _without_comment(text: str) -> str:
    """``text`` up to a shell comment (a ``#`` after a blank, outside quotes)."""
    for match in re.finditer(r"\s#", text):
        before = text[:match.start()]
        if before.count('"') % 2 == 0 and before.count("'") % 2 == 0:
            return before.rstrip()
    return text.strip()


def _markdown_commands(text: str):
    lines, fenced, block = text.splitlines(), False, []
    prose = []
    for number, line in enumerate(lines, start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            prose.append((number, line))
            continue
        block.append(line.rstrip())
        if not line.rstrip().endswith("\\"):   # a logical line ends
            joined = " ".join(part.rstrip("\\").strip() for part in block)
            block = []
            if _command(joined):
                yield number, _without_comment(joined)
    text = "\n".join(line for _, line in prose)
    for match in re.finditer(r"`([^`]+)`", text):
        span = " ".join(match.group(1).split())
        if _command(span):
            line = prose[text.count("\n", 0, match.start())][0]
            yield line, span


def _comment_commands(text: str):
    pattern = re.compile(r"(?:\.venv/bin/)?fedpft\s+[\w-]+\s+-.*$")
    for number, line in enumerate(text.splitlines(), start=1):
        match = pattern.search(line)
        if match and "#" in line[:match.start()]:
            yield number, match.group(0)


def doc_commands():
    """``(where, command text)`` for every fedpft command in the docs."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        finder = _markdown_commands if path.suffix == ".md" else _comment_commands
        found += [(f"{path.relative_to(REPO)}:{line}", command) for line, command in finder(text)]
    return found


COMMANDS = doc_commands()


def test_the_docs_have_the_commands_this_test_expects():
    """The extraction itself: the README's main job, its --set example, resume, predict and a bench command,
    and the examples' own command are found (a change of format that hid them would empty this test)."""
    texts = [command for _, command in COMMANDS]
    assert ".venv/bin/fedpft run --cf fedml_config/simulation_mpi.yaml" in texts
    assert (".venv/bin/fedpft run --cf fedml_config/simulation_mpi.yaml --set comm_round=2 client_num_in_total=4 "
            "fedpft_align_interval=1 --out runs/try") in texts
    assert ".venv/bin/fedpft run --resume runs/<run>" in texts
    assert 'fedpft predict runs/<run> "a gripping, beautifully acted film" "a tedious mess"' in texts
    assert ".venv/bin/fedpft bench --cf fedml_config/bench.yaml --smoke" in texts
    assert "fedpft compress --model minilm-l6" in texts
    assert ".venv/bin/fedpft run --cf fedml_config/simulation_mpi_gpu.yaml --check" in texts
    assert any(where.startswith("examples/csv_dataset.yaml") for where, _ in COMMANDS)
    assert not any(command.startswith(("fedpft run …", "fedpft run to")) for command in texts)


# ---------------------------------------------------------------------- run directories for runs/<run>
def _config():
    return launcher.plan_run(REPO / "fedml_config" / "simulation_sp.yaml", cwd=REPO).config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """What a finished run leaves for predict: config.yaml and the FM's LoRA + head (final/trainable.safetensors),
    made by the server's own code on the packaged MiniLM."""
    import torch
    from safetensors.torch import save_file

    from fedpft_algo import FedPFTConfig, add_lora, trainable_state
    from fedpft_algo.models import load_full_model

    run_dir = tmp_path_factory.mktemp("finished")
    config = _config()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    fedpft = FedPFTConfig.from_dict(config["fedpft_args"], prefix="fedpft_")
    torch.manual_seed(0)
    model = add_lora(load_full_model("minilm-l6", 2), fedpft)
    (run_dir / "final").mkdir()
    save_file({k: v.contiguous() for k, v in trainable_state(model).items()},
              str(run_dir / "final" / "trainable.safetensors"))
    return run_dir


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped after 3 of its 8 rounds, with its checkpoint, for ``run --resume``."""
    import torch

    from fedpft_algo.rundir import checkpoint

    run_dir = tmp_path_factory.mktemp("stopped")
    config = _config()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    checkpoint.save(run_dir, 3, {"w": torch.zeros(1)},
                    {"config_fingerprint": checkpoint.config_fingerprint(config), "history": []})
    return run_dir


# ---------------------------------------------------------------------- running them
def _prepared(command: str, finished: Path, stopped: Path, out: Path):
    """The argument list to run for a documented command, in its check-only or cheapest mode."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    argv = _command(command)
    run_dir = stopped if argv[0] == "run" and "--resume" in argv else finished
    argv = [str(run_dir) if word == "runs/<run>" else word for word in argv]
    left = [word for word in argv if re.search(r"<[^>]+>", word)]
    assert not left, f"placeholder {left[0]!r}: add what it stands for to PLACEHOLDERS in {__file__}"
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(out)
    if argv[0] in ("run", "bench"):
        argv.append("--check")
    return argv


@pytest.mark.parametrize("where,command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_documented_command_works(where, command, finished_run, stopped_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    import torch

    from fedpft_algo.launch import limits

    if not torch.cuda.is_available():   # the GPU nodes' commands: pre-flight as on a node with 4 GPUs (the
        monkeypatch.setattr(limits, "_cuda_devices", lambda: 4)   # CPU answer: tests/launch/test_devices.py)
    argv = _prepared(command, finished_run, stopped_run, tmp_path / "out")
    assert argv[0] in cli.COMMANDS, f"{where}: `{command}`: fedpft has no subcommand {argv[0]!r}"
    try:   # every command: the argument parser accepts it (the rest have no cheap mode to run in)
        cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `{command}` is refused: {capsys.readouterr().err.strip()}")
    if argv[0] not in ("run", "bench", "predict"):
        return
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"{where}: `{command}` exits {code}: {err.strip()}"
    assert err == "", f"{where}: `{command}` printed on stderr: {err}"
    if argv[0] == "predict":   # one "label<TAB>text" line per text (labels are ids: the run has no partition.json)
        answers = [line.split("\t") for line in out.splitlines()]
        texts = [word for word in argv[2:] if word != "--text"]   # positional, or each after --text
        assert [text for _, text in answers] == texts and {label for label, _ in answers} <= {"0", "1"}, out
    else:
        assert "check passed" in out
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- the console as a user sees it
def _fedpft(*argv, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fedpft_algo.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.process  # the command as a user types it, in a process of its own
def test_the_console_carries_only_the_tools_lines_and_v_shows_the_rest():
    """``import fedml`` (pre-flight's client split) warns that pkg_resources is deprecated: not on the console,
    but with -v."""
    quiet = _fedpft("run", "--check", "--cf", "fedml_config/simulation_mpi.yaml")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert quiet.stdout.startswith("fedpft: check passed")
    loud = _fedpft("-v", "run", "--check", "--cf", "fedml_config/simulation_mpi.yaml")
    assert loud.returncode == 0 and "pkg_resources is deprecated" in loud.stderr


@pytest.mark.process  # the command as a user types it, in a process of its own
def test_predict_prints_only_its_answers(finished_run):
    """No load report of the new task head, no FutureWarning: one line per text."""
    result = _fedpft("predict", str(finished_run), "a gripping, beautifully acted film", "a tedious mess")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert [line.split("\t")[1] for line in result.stdout.splitlines()] == ["a gripping, beautifully acted film",
                                                                           "a tedious mess"]


@pytest.mark.parametrize("command", ["run", "compress"])
def test_set_takes_several_values_and_may_repeat(command):
    args = cli.build_parser().parse_args([command, "--set", "fedpft_lora_r=4", "fedpft_max_length=32",
                                          "--set", "fedpft_lora_alpha=16", "--out", "x"])
    assert args.overrides == ["fedpft_lora_r=4", "fedpft_max_length=32", "fedpft_lora_alpha=16"]
    assert args.out == "x"
