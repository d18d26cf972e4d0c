"""The tuned result in Hugging Face's formats: ``final/adapter/`` (PEFT) and ``fedpft export --merged``.

Both must give what ``fedpft predict`` gives: the same logits on the same texts. The run is a real
``fedpft run`` (single process, one round) on a 2-layer cut of the packaged MiniLM.
"""
import json

import pytest
import torch
from safetensors.torch import save_file

from fedpft_algo import cli
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.lora import add_lora, plug_in_, trainable_state
from fedpft_algo.inference import load_tuned_model
from fedpft_algo.rundir.hf_export import save_adapter
from fedpft_algo.rundir.layout import RunDir
from tests.runtime.test_fedml_integration import fedpft_run, small_run_overrides

TEXTS = ["a gripping, beautifully acted film", "a tedious mess", "the plot was dull and far too long",
         "warm, funny and moving"]


@pytest.fixture(scope="module")
def finished_run(minilm_2layer, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    overrides = small_run_overrides(minilm_2layer, root / "c") + ["comm_round=1"]
    result = fedpft_run("simulation_sp.yaml", root / "run", overrides, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="module")
def tuned(finished_run):
    """``fedpft predict``'s model: logits and label names on TEXTS."""
    model, tokenizer, label_names = load_tuned_model(finished_run)
    return _logits(model, tokenizer), label_names


def _logits(model, tokenizer):
    batch = tokenizer(TEXTS, truncation=True, max_length=128, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def _fedpft_predict(run_dir, capsys) -> list:
    assert cli.main(["predict", str(run_dir), *TEXTS]) == 0
    return [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]


@pytest.mark.process  # the finished run comes from a real `fedpft run`
def test_adapter_folder_loads_with_peft_like_fedpft_predict(finished_run, tuned, minilm_2layer, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    adapter = finished_run / RunDir.FINAL_ADAPTER
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["modules_to_save"] == ["classifier"]

    base = AutoModelForSequenceClassification.from_pretrained(minilm_2layer, num_labels=2)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    logits, label_names = tuned
    assert torch.allclose(_logits(model, AutoTokenizer.from_pretrained(minilm_2layer)), logits, atol=1e-5)
    predicted = [label_names[i] for i in logits.argmax(-1).tolist()]
    assert _fedpft_predict(finished_run, capsys) == predicted


@pytest.mark.process  # the finished run comes from a real `fedpft run`
def test_export_merged_is_a_standalone_model_for_automodel_and_pipeline(finished_run, tuned, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    out = tmp_path / "merged"
    assert cli.main(["export", str(finished_run), "--merged", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert not [name for name, _ in model.named_parameters() if "lora_" in name or "modules_to_save" in name]
    logits, label_names = tuned
    assert label_names == ["rotten", "fresh"]
    assert model.config.id2label == {0: "rotten", 1: "fresh"} and model.config.label2id == {"rotten": 0, "fresh": 1}
    assert torch.allclose(_logits(model, AutoTokenizer.from_pretrained(out)), logits, atol=1e-4)

    results = pipeline("text-classification", model=str(out))(TEXTS)
    assert [r["label"] for r in results] == _fedpft_predict(finished_run, capsys)
    expected = logits.softmax(-1).max(-1).values.tolist()
    assert [r["score"] for r in results] == pytest.approx(expected, abs=1e-4)


@pytest.mark.process  # the finished run comes from a real `fedpft run`
def test_export_refuses_an_existing_folder_and_a_missing_run(finished_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    assert cli.main(["export", str(finished_run), "--merged", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty" in err
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]

    assert cli.main(["export", str(tmp_path / "no-run"), "--merged", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a finished fedpft run directory" in err
    assert not (tmp_path / "out").exists()


def test_export_merged_refuses_a_vision_run(make_tiny_model, tmp_path, capsys):
    """A ViT run has an adapter folder but no merged export (no image processor to ship with it)."""
    vit_dir, run_dir = tmp_path / "vit", tmp_path / "run"
    make_tiny_model("vit", num_labels=3).save_pretrained(vit_dir)
    torch.manual_seed(0)
    model = add_lora(make_tiny_model("vit", num_labels=3), FedPFTConfig())
    (run_dir / "final").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in trainable_state(model).items()},
              str(run_dir / "final" / "trainable.safetensors"))
    (run_dir / "config.yaml").write_text(f"model_args:\n  model: {vit_dir}\n")
    out = tmp_path / "merged"
    assert cli.main(["export", str(run_dir), "--merged", str(out)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fedpft: error: ")]
    assert len(errors) == 1 and "vision run" in errors[0] and "PeftModel.from_pretrained" in errors[0]
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("model_type", ["bert", "roberta", "mpnet", "distilbert", "llama"])
def test_adapter_of_every_text_architecture_round_trips(make_tiny_model, tiny_inputs, tmp_path, model_type,
                                                       one_torch_thread):
    """save_adapter on each registered text architecture: LoRA + head (one or two head modules)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    make_tiny_model(model_type, seed=0, num_labels=3).save_pretrained(tmp_path / "fm")
    model = add_lora(make_tiny_model(model_type, seed=0, num_labels=3), FedPFTConfig())
    generator = torch.Generator().manual_seed(1)
    plug_in_(model, {k: torch.randn(v.shape, generator=generator) * 0.1 for k, v in trainable_state(model).items()})
    model.eval()
    save_adapter(model, tmp_path / "run" / RunDir.FINAL_ADAPTER)
    save_adapter(model, tmp_path / "run" / RunDir.FINAL_ADAPTER)  # a second save replaces the first, whole

    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "fm", num_labels=3)
    with torch.no_grad():  # a base whose head differs: the adapter's head must replace it
        for module in base.modules():
            if hasattr(module, "out_features") and module.out_features == 3:
                module.weight.zero_()
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "run" / RunDir.FINAL_ADAPTER)).eval()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        expected = model(**inputs).logits
        assert torch.allclose(loaded(**inputs).logits, expected, atol=1e-5)
        assert torch.allclose(model.merge_and_unload()(**inputs).logits, expected, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "run" / "final").iterdir()) == ["adapter"]
