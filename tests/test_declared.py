"""The option declaration (specsampler.generation.declared, issue #29 item 1): every declared option reaches every entry
point (generate, custom_generate=speculative_generate, the patched generate, the command line), a bad value gets the
same message naming it through each, the command line refuses bad values and combinations before loading a model, and
the vLLM integration's environment is declared alike."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from util import perturbed, tiny_config, tiny_model  # noqa: E402

import specsampler  # noqa: E402
import specsampler.hf as hf  # noqa: E402
from specsampler import cli  # noqa: E402
from specsampler.generation import declared  # noqa: E402
from specsampler.generation.declared import OPTIONS, OWN, VLLM_ENV, env_value  # noqa: E402
from specsampler.generation.options import GENERATION_CONFIG_OPTIONS  # noqa: E402
from specsampler.generation.settings import resolve_settings  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")
V = 64
SRC = Path(specsampler.__file__).parent

#: A bad value of each declared option that has a check: (the Python value, the command-line value or None where
#: argparse's type refuses every string the check would, extra keywords of the call).
BAD = {
    "max_new_tokens": (-1, "-1", {}),
    "num_draft_tokens": (0, "0", {}),
    "draft_tree": ((2, 0), "2,0", {}),
    "draft_tree_sampling": ("all", "all", {}),
    "draft_tree_min_prob": (1.5, "1.5", {}),
    "draft_tree_budget": (0, "0", {}),
    "prompt_lookup_num_candidates": (0, "0", {}),
    "num_assistant_tokens_schedule": ("dynamic", "dynamic", {}),
    "verify_method": ("blok", "blok", {}),
    "do_sample": ("yes", None, {}),
    "temperature": (-0.5, "-0.5", {}),
    "top_k": (-1, "-1", {}),
    "top_p": (1.5, "1.5", {}),
    "min_p": (-0.1, "-0.1", {}),
    "repetition_penalty": (0.0, "0", {}),
    "no_repeat_ngram_size": (-1, "-1", {}),
    "seed": (1.5, None, {}),
    "num_return_sequences": (0, None, {}),
    "num_assistant_tokens": (0, None, {}),
    "prompt_lookup_num_tokens": (-1, None, {"draft": None}),
    "max_matching_ngram_size": (0, None, {}),
    "max_time": (-1.0, None, {}),
    "output_scores": ("yes", None, {}),
    "output_logits": ("yes", None, {}),
    "return_dict_in_generate": ("yes", None, {}),
}
CHECKED = [name for name, option in OPTIONS.items() if option.check is not declared._as_given]


@pytest.fixture(autouse=True)
def _unpatched():
    hf.unpatch_transformers()
    yield
    hf.unpatch_transformers()


@pytest.fixture(scope="module")
def pair():
    target = tiny_model(tiny_config("llama", V), 0)
    return target, perturbed(target, 0.005)


def _message(name: str, value) -> str:
    """The declared check's message for `value`."""
    with pytest.raises((TypeError, ValueError)) as info:
        OPTIONS[name].validate(value)
    return str(info.value)


# -------------------------------------------------------------------------------------------- the declaration's reach
def test_every_checked_option_has_a_bad_value_here():
    """A new declared option with a check needs its bad value in BAD (so the tests below reach it)."""
    assert sorted(CHECKED) == sorted(BAD)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_reaches_every_entry_point(name):
    """Walk the declaration: generate names the option in its signature or takes it as a GenerationConfig option;
    speculative_generate's signature names specsampler's own (transformers hands the callable those, the config the
    rest); a flag has the option's help and lands under the option's name; a transformers name is a GenerationConfig
    attribute."""
    option = OPTIONS[name]
    generate_params = inspect.signature(specsampler.generate).parameters
    assert name in generate_params or name in GENERATION_CONFIG_OPTIONS
    assert (name in declared.NAMED) == (name in generate_params)
    spec_params = inspect.signature(specsampler.speculative_generate).parameters
    assert (name in spec_params) == option.own
    if not option.own:
        assert name in GENERATION_CONFIG_OPTIONS
    if option.transformers is not None:
        assert hasattr(transformers.GenerationConfig(), option.transformers)
    actions = {a.dest: a for a in _generate_parser()._actions}
    if option.cli_flag is None:
        assert name not in actions
    else:
        assert actions[name].option_strings == [option.cli_flag] and actions[name].help == option.help
        assert (actions[name].metavar == "{" + ",".join(option.choices) + "}") if option.choices else True


def _generate_parser():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["generate"]


def test_generate_docstring_describes_every_named_option():
    doc = specsampler.generate.__doc__
    for name in declared.NAMED:
        assert re.search(rf"^    {name} : ", doc, re.M), name
    assert "{options}" not in doc and "{own}" not in specsampler.speculative_generate.__doc__


def _spelled(path: Path) -> set[str]:
    """The identifiers and the words of the string constants of a module's code (docstrings and comments left out)."""
    import ast

    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words |= set(re.findall(r"[-\w]+", node.value))
        words |= {getattr(node, attr) for attr in ("id", "attr", "arg") if isinstance(getattr(node, attr, None), str)}
    return words


def test_own_options_are_spelled_only_where_they_act():
    """Adding an option is one entry plus its use: the code of the entry points that pass options on (generate, the
    patch, the parser, the CLI's option plumbing) spells none of specsampler's own options (but those the command
    line passes itself, with its defaults), neither its name nor its flag."""
    from specsampler.cli.options import RUN_OPTIONS

    for path in ("generation/api.py", "hf.py", "cli/parser.py", "cli/options.py"):
        words = _spelled(SRC / path)
        spelled = [n for n in OWN if n not in RUN_OPTIONS and {n, OPTIONS[n].cli_flag} & words]
        assert spelled == [], (path, spelled)


# ------------------------------------------------------------------------------ one message through every entry point
def _entry_call(entry: str, target, draft, ids, name, value, extra):
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=4, pad_token_id=0, eos_token_id=None)
    kw[name] = value
    draft = extra.get("draft", draft)
    if entry == "generate":
        return specsampler.generate(target, draft, ids, **kw)
    if entry == "patched":
        with specsampler.patched_transformers():
            return target.generate(ids, **({} if draft is None else {"assistant_model": draft}), **kw)
    return target.generate(ids, custom_generate=specsampler.speculative_generate,
                           **({} if draft is None else {"draft_model": draft}), **kw)


@pytest.mark.parametrize("entry", ["generate", "custom_generate", "patched"])
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_value_same_message_everywhere(pair, entry, name):
    """The declared check's message, exactly, whichever entry point the value enters by (before transformers builds
    its own warpers or validates its config from it)."""
    target, draft = pair
    value, _, extra = BAD[name]
    message = _message(name, value)
    assert name in message.split(" must ")[0]
    with pytest.raises((TypeError, ValueError), match=f"^{re.escape(message)}$"):
        _entry_call(entry, target, draft, torch.tensor([[3, 4, 5]]), name, value, extra)


@pytest.mark.parametrize("name", [n for n in sorted(BAD) if BAD[n][1] is not None])
def test_cli_bad_value_before_loading(name, tmp_path, capsys):
    """The command line names the flag and gives the declared message (its option name put in front as the flag),
    against a target that cannot load: checked before any model is loaded."""
    (tmp_path / "unloadable").mkdir()
    (tmp_path / "unloadable" / "config.json").write_text("{}")
    option, (value, text, _) = OPTIONS[name], BAD[name]
    message = _message(name, value)
    body = message[len(name) + 1:] if message.startswith(name + " ") else message
    rc = cli.main(["generate", "--target", str(tmp_path / "unloadable"), "--prompt-lookup", "--prompt", "w5",
                   option.cli_flag, text])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"specsampler: error: {option.cli_flag}: {body}\n", err


@pytest.mark.parametrize("name, text, value", [("max_new_tokens", "0", 0), ("seed", "-1", -1),
                                               ("seed", str(2**63), 2**63)])
def test_cli_stricter_rules_are_declared(name, text, value, tmp_path, capsys):
    """The command line's own rules (no 0 new tokens: target.generate refuses it; a seed a 64-bit generator takes)
    are the option's declared cli_check, with its message."""
    option = OPTIONS[name]
    with pytest.raises(ValueError) as info:
        option.cli_check(name, option.validate(value))
    rc = cli.main(["generate", "--target", str(tmp_path / "missing"), "--prompt-lookup", "--prompt", "w5",
                   option.cli_flag, text])
    body = str(info.value)[len(name) + 1:]
    assert rc == 2 and capsys.readouterr().err == f"specsampler: error: {option.cli_flag}: {body}\n"


COMBINATIONS = [  # (flags, the same options for the resolver, the drafter: "draft" or "lookup")
    (["--draft-tree-budget", "4"], dict(draft_tree_budget=4), "draft"),
    (["--draft-tree-sampling", "iid"], dict(draft_tree_sampling="iid"), "draft"),
    (["--draft-tree-min-prob", "0.1"], dict(draft_tree_min_prob=0.1), "draft"),
    (["--draft-tree", "3,2", "--draft-tree-budget", "1"], dict(draft_tree=(3, 2), draft_tree_budget=1), "draft"),
    (["--draft-tree", "3,2", "--draft-tree-sampling", "iid", "--draft-tree-budget", "4"],
     dict(draft_tree=(3, 2), draft_tree_sampling="iid", draft_tree_budget=4), "draft"),
    (["--draft-tree", "3,2", "--num-draft-tokens", "4"], dict(draft_tree=(3, 2), num_draft_tokens=4), "draft"),
    (["--draft-tree", "3,2", "--verify-method", "block"], dict(draft_tree=(3, 2), verify_method="block"), "draft"),
    (["--draft-tree", "3,2", "--schedule", "cost"], dict(draft_tree=(3, 2), num_assistant_tokens_schedule="cost"),
     "draft"),
    (["--draft-tree", "10,10,10,10"], dict(draft_tree=(10, 10, 10, 10)), "draft"),
    (["--prompt-lookup-candidates", "3"], dict(prompt_lookup_num_candidates=3), "draft"),
    (["--draft-tree", "3,2"], dict(draft_tree=(3, 2)), "lookup"),
    (["--prompt-lookup-candidates", "3", "--verify-method", "block"],
     dict(prompt_lookup_num_candidates=3, verify_method="block"), "lookup"),
]


@pytest.mark.parametrize("flags, options, drafter", COMBINATIONS, ids=[" ".join(c[0]) for c in COMBINATIONS])
def test_cli_refuses_combinations_before_loading(flags, options, drafter, tmp_path, capsys):
    """A combination the resolver refuses, refused by the command line with the resolver's message and the flag of
    the option it names, before any model is loaded (both models unloadable)."""
    from specsampler.cli.options import UnloadedDraft
    from specsampler.generation.drafters import PromptLookupDrafter

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    model = str(tmp_path / "m")
    with pytest.raises(ValueError) as info:
        resolve_settings(None, draft=UnloadedDraft() if drafter == "draft" else PromptLookupDrafter(),
                         max_new_tokens=4, **options)
    named = max((n for n in OPTIONS if str(info.value).startswith(n)), key=len)
    rc = cli.main(["generate", "--target", model, *(["--draft", model] if drafter == "draft" else ["--prompt-lookup"]),
                   "--prompt", "w5", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"specsampler: error: {OPTIONS[named].cli_flag}: {info.value}\n", err


# --------------------------------------------------------------------------------------------------- vLLM's settings
def test_vllm_environment_declared():
    """Defaults when unset or empty; a value outside the choices is a ValueError naming the variable with the one
    choice message; the methods are the chain rules of the one place the options take them from."""
    assert {k: env_value(k, {}) for k in VLLM_ENV} == {"enable": "1", "method": "token", "backend": "auto"}
    assert env_value("method", {"SPECSAMPLER_VLLM_METHOD": " block "}) == "block"
    assert env_value("backend", {"SPECSAMPLER_VLLM_BACKEND": ""}) == "auto"
    assert VLLM_ENV["method"].choices == declared.CHAIN_METHODS == tuple(specsampler._api.METHODS)
    with pytest.raises(ValueError, match=r"^SPECSAMPLER_VLLM_METHOD must be 'token' or 'block', got 'tree'$"):
        env_value("method", {"SPECSAMPLER_VLLM_METHOD": "tree"})
    with pytest.raises(ValueError, match=r"^SPECSAMPLER_VLLM_BACKEND must be 'auto', 'torch' or 'triton', got 'cuda'"):
        env_value("backend", {"SPECSAMPLER_VLLM_BACKEND": "cuda"})
    assert env_value("enable", {"SPECSAMPLER_VLLM": "yes"}) == "yes"  # (any value but "0" enables it)


def test_verify_method_choices_come_from_one_place():
    assert OPTIONS["verify_method"].choices == declared.VERIFY_METHODS == declared.CHAIN_METHODS + ("traversal",)
    assert _generate_parser()._option_string_actions["--verify-method"].metavar == "{token,block,traversal}"
