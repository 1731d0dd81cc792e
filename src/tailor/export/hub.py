"""`tailor push`: a run's adapter (or merged model) with its tokenizer, chat template, generation
config, loss curve and model card, to a Hugging Face Hub repo in one commit.

The token and the network are checked first (whoami), so a missing or wrong token fails in a
second, before a merge or a repo is made. The token is never printed: messages from the Hub that
carry it are scrubbed. Uploads go through `HfApi.create_repo(exist_ok=True)` and `upload_folder`
on a staging folder of links to the files, so nothing large is copied.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tailor import models
from tailor.errors import TailorError, UsageError
from tailor.export import card

# What a model or adapter folder holds that belongs on the Hub (not checkpoint state, not
# tailor-source.txt, which names local paths).
_UPLOAD = ("*.json", "*.safetensors", "*.jinja", "*.model", "*.tiktoken", "merges.txt", "vocab.txt")

# Files of the other kind that an earlier push to the same repo may have left: a repo holding both
# an adapter and full weights loads as neither (transformers sees adapter_config.json, goes to peft).
_ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]
_MODEL_FILES = ["config.json", "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                "pytorch_model*.bin"]

NO_TOKEN = (
    "No Hugging Face token: pushing needs one with write access. Pass --token hf_..., set HF_TOKEN, "
    "or log in once with `hf auth login` (tokens: https://huggingface.co/settings/tokens)."
)


@dataclass
class PushResult:
    repo_id: str
    url: str  # the repo's page
    commit_url: str
    files: list[str]  # what the commit uploaded


@dataclass
class Connection:
    api: object  # huggingface_hub.HfApi
    token: str
    user: str


def check_repo_id(repo_id: str) -> None:
    if not models._HUB_ID.match(repo_id or ""):
        raise UsageError(f"{repo_id!r} is not a Hub repo id: give OWNER/NAME (your user or organisation name, "
                         "then the model's name), e.g. alice/pirate-smollm2.")


def connect(token: str | None = None) -> Connection:
    """Find the token (--token, then HF_TOKEN, then the login cache) and prove it works."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        raise TailorError("Pushing needs the network, but huggingface_hub is in offline mode (HF_HUB_OFFLINE is "
                          "set). Unset HF_HUB_OFFLINE and push again.")
    where = "--token"
    if not token:
        token = get_token()
        where = "HF_TOKEN" if os.environ.get("HF_TOKEN") else "your `hf auth login` token"
    if not token:
        raise TailorError(NO_TOKEN)
    api = HfApi(token=token)
    try:
        user = api.whoami(token=token)["name"]
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise TailorError(f"The Hugging Face Hub rejected {where} (401: invalid or expired). Make a token with "
                              "write access at https://huggingface.co/settings/tokens and pass it with --token, "
                              "set HF_TOKEN, or run `hf auth login`.") from None
        raise TailorError(f"The Hugging Face Hub at {api.endpoint} refused the token check: "
                          f"{scrub(exc, token)}") from None
    except Exception as exc:  # connection refused, DNS, TLS, timeouts: all say "no network"
        raise TailorError(f"Could not reach the Hugging Face Hub at {api.endpoint} ({type(exc).__name__}: "
                          f"{scrub(exc, token)}). Check the network (and HF_ENDPOINT, if set), then push "
                          "again.") from None
    return Connection(api=api, token=token, user=user)


def preflight(repo_id: str, token: str | None = None) -> str:
    """Check a push could happen (repo id, token, network) before long work; returns the token."""
    check_repo_id(repo_id)
    return connect(token).token


def scrub(exc: BaseException | str, token: str) -> str:
    text = str(exc)
    return text.replace(token, "hf_***") if token else text


def find_folder(source: str | os.PathLike) -> tuple[Path, Path | None]:
    """(model or adapter folder, run folder or None) for a run folder or a final/adapter/model folder."""
    path = Path(source)
    if (path / "final").is_dir():
        return path / "final", path
    if (path / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return path, (path.parent if (path.parent / "config.yaml").is_file() else None)
    if not path.exists():
        raise TailorError(f"{path} does not exist. Give a run folder (runs/NAME) or its final/ folder.")
    hint = (" The run has checkpoints but did not finish: `tailor train --resume " + str(path) + "` completes it."
            if list(path.glob("checkpoint-*")) else "")
    raise TailorError(f"{path} has no final/ folder and is not an adapter or model folder (no adapter_config.json "
                      f"or config.json). Give a finished run folder (runs/NAME) or its final/ folder.{hint}")


def push(source: str | os.PathLike, repo_id: str, *, private: bool = False, merged: bool = False,
         revision: str | None = None, token: str | None = None, message: str | None = None,
         say=print) -> PushResult:
    """Upload `source` (a run folder or a final/adapter/model folder) to `repo_id` in one commit."""
    check_repo_id(repo_id)
    folder, run_dir = find_folder(source)
    is_adapter = (folder / "adapter_config.json").is_file()
    if merged and not is_adapter:
        raise UsageError(f"--merged folds a LoRA adapter into its base, but {folder} is already a full model: "
                         "push it without --merged.")
    hub = connect(token)
    say = say or (lambda *_: None)
    with tempfile.TemporaryDirectory(prefix="tailor-push-") as tmp:
        model_dir = folder
        if merged:
            from tailor.train.lora import merge

            say(f"merging {folder} into its base ...")
            model_dir = merge(folder, Path(tmp) / "merged")
        stage = Path(tmp) / "upload"
        files = _stage(model_dir, stage, loss_png=_loss_png(folder, run_dir))
        (stage / "README.md").write_text(_card(folder, run_dir, repo_id, merged=merged, is_adapter=is_adapter))
        files.append("README.md")
        what = "merged model" if merged else ("LoRA adapter" if is_adapter else "model")
        say(f"pushing the {what} ({len(files)} files) to {repo_id}" + (f" (branch {revision})" if revision else ""))
        commit = _upload(hub, stage, repo_id, private=private, revision=revision,
                         message=message or f"Upload {what} with tailor",
                         stale=_MODEL_FILES if is_adapter and not merged else _ADAPTER_FILES)
    url = f"{hub.api.endpoint}/{repo_id}" + (f"/tree/{revision}" if revision else "")
    return PushResult(repo_id=repo_id, url=url, commit_url=commit, files=sorted(files))


def _stage(model_dir: Path, stage: Path, *, loss_png: Path | None) -> list[str]:
    """Links in `stage` to the files worth uploading; returns their names."""
    stage.mkdir(parents=True)
    chosen = {p for pattern in _UPLOAD for p in model_dir.glob(pattern) if p.is_file() and p.name != "README.md"}
    if loss_png is not None:
        chosen.add(loss_png)
    for p in chosen:
        try:
            (stage / p.name).symlink_to(p.resolve())
        except OSError:  # no symlinks here (Windows without the privilege): copy instead
            shutil.copy2(p, stage / p.name)
    return sorted(p.name for p in chosen)


def _loss_png(folder: Path, run_dir: Path | None) -> Path | None:
    for p in (folder / "loss.png", run_dir / "loss.png" if run_dir else None):
        if p is not None and p.is_file():
            return p
    return None


def _card(folder: Path, run_dir: Path | None, repo_id: str, *, merged: bool, is_adapter: bool) -> str:
    """The card training wrote (or a short one), with Hub front matter and Hub load instructions."""
    cfg = _run_config(run_dir)
    readme = folder / "README.md"
    written_meta, body = card.split(readme.read_text()) if readme.is_file() else ({}, "")
    base_ref = models.adapter_base(folder) if is_adapter else written_meta.get("base_model") or cfg.get("model")
    requested = cfg.get("model") or written_meta.get("base_model")
    license = written_meta.get("license") or card.base_license(requested) or card.base_license(base_ref)
    method = "lora" if is_adapter else cfg.get("method", "full")
    meta = card.metadata(base_ref=base_ref, requested=requested, method=method, merged=merged, data=cfg.get("data"),
                         license=license)
    if not body.strip():
        body = f"# {repo_id.split('/')[-1]}\n\nFine-tuned with tailor.\n"
    if merged:
        body = body.replace("(LoRA adapter)", "(LoRA, merged into its base)", 1)
    if "base_model" not in meta and base_ref:
        body = card.no_base_note(base_ref) + "\n" + body
    body = card.replace_use_it(body, card.use_it(repo_id, library=meta["library_name"], base=meta.get("base_model"),
                                                       base_ref=base_ref))
    return card.render(meta, card.hide_local_paths(body))


def _run_config(run_dir: Path | None) -> dict:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _upload(hub: Connection, stage: Path, repo_id: str, *, private: bool, revision: str | None, message: str,
            stale: list[str]) -> str:
    """create_repo + (create_branch) + upload_folder, which deletes `stale` files in the same commit.
    Every Hub error becomes one scrubbed message."""
    api, token = hub.api, hub.token
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(stage), commit_message=message,
                                 revision=revision, token=token, delete_patterns=stale)
    except Exception as exc:
        raise TailorError(f"Pushing to {repo_id} failed: {scrub(exc, token)}") from None
    return info.commit_url


def push_after_training(final: Path, repo_id: str, *, token: str, quiet: bool = False) -> PushResult:
    """The end of `tailor train --push-to-hub`: a failed push says the run itself is safe."""
    try:
        result = push(final, repo_id, token=token, say=None if quiet else print)
    except TailorError as exc:
        raise TailorError(f"Training finished ({final}), but the push failed: {exc}\nRetry with: "
                          f"tailor push {final.parent} {repo_id}") from None
    if not quiet:
        print(f"pushed: {result.url} (commit {result.commit_url})")
    return result
