"""RunSettings: FedML's keys the plugin reads, typed, and the resume arithmetic in one place."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fedpft_algo.config import flatten
from fedpft_algo.errors import ConfigError
from fedpft_algo.settings import RunSettings

CONFIG = yaml.safe_load((Path(__file__).resolve().parent.parent / "fedml_config" / "simulation_sp.yaml").read_text())


def test_from_sections_reads_fedml_keys_and_the_fedpft_section():
    settings = RunSettings.from_sections(CONFIG)
    assert (settings.dataset, settings.model, settings.comm_round, settings.client_num_per_round) == \
        ("rotten_tomatoes", "minilm-l6", 8, 2)
    assert settings.fedpft.align_interval == 3 and settings.cache_dir == Path("./.cache/fedpft")
    assert (settings.round_offset, settings.resume_checkpoint, list(settings.rounds)) == (0, None, list(range(8)))
    assert settings.task_args() == {"text_columns": None, "label_column": None, "max_train": 2000, "max_test": 500,
                                    "seed": 0}


def test_fedml_args_give_the_same_settings():
    args = SimpleNamespace(**flatten(CONFIG), rank=0, role="server", comm=None)   # FedML adds its own keys
    assert RunSettings.from_args(args) == RunSettings.from_sections(CONFIG)


def test_resumed_config_counts_the_remaining_rounds_and_settings_add_them_back():
    resumed = RunSettings.resumed(CONFIG, 3, "/run/checkpoint/round-0003.json")
    assert CONFIG["train_args"]["comm_round"] == 8   # the run's own config is not changed
    flat = flatten(resumed)
    assert (flat["comm_round"], flat["resume_round"], flat["resume_checkpoint"]) == \
        (5, 3, "/run/checkpoint/round-0003.json")   # what FedML counts in the resumed processes
    settings = RunSettings.from_sections(resumed)
    assert (settings.comm_round, settings.round_offset, list(settings.rounds)) == (8, 3, [3, 4, 5, 6, 7])
    assert settings.resume_checkpoint == Path("/run/checkpoint/round-0003.json")


def test_round_seed_depends_on_seed_round_and_participant_only():
    settings = RunSettings.from_sections(CONFIG)
    assert settings.round_seed(2, "client1") == RunSettings.from_sections(RunSettings.resumed(CONFIG, 1, "c")) \
        .round_seed(2, "client1")
    assert len({settings.round_seed(2, "client1"), settings.round_seed(3, "client1"),
                settings.round_seed(2, "client2")}) == 3


def test_a_missing_required_key_is_named():
    config = {section: dict(keys) for section, keys in CONFIG.items()}
    del config["data_args"]["dataset"]
    with pytest.raises(ConfigError, match="config key 'dataset' is missing"):
        RunSettings.from_sections(config)
