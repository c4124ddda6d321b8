"""The parity harness (scripts/parity.py's engine) on the tiny fixture, in graph and pynative mode."""
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURE, assert_scaled
import parity_lib as parity  # scripts/parity.py's harness (conftest puts scripts/ on the path)

REPO = FIXTURE.parent.parent.parent


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_components_match_golden(mode, golden):
    ref = golden("components")
    out = {**parity.prior_component_outputs(FIXTURE, ref, mode), **parity.decoder_component_outputs(FIXTURE, ref, mode)}
    assert sorted(out) == sorted(ref)
    for key, value in ref.items():
        if key.endswith(("input_ids", "attention_mask", "timesteps")) or value.dtype == bool:
            np.testing.assert_array_equal(out[key], value, err_msg=key)
        else:
            assert_scaled(out[key], value, 1e-4, f"{mode} {key}")


def test_prior_pipeline_pynative(golden):
    ref = golden("prior_pipeline")
    out = parity.prior_pipeline_outputs(FIXTURE, mode="pynative")
    for key in ref:
        assert_scaled(out[key], ref[key], 1e-4, key)


def test_tokenizer_outputs(golden):
    ref = golden("tokenizers")
    out = parity.tokenizer_outputs(FIXTURE)
    assert sorted(out) == sorted(ref)
    for key in ref:
        np.testing.assert_array_equal(out[key], ref[key], err_msg=key)


def test_parity_script_rejects_a_non_fixture(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "parity.py"), str(tmp_path), str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "golden/cases.json" in res.stderr


def test_prior_debug_intermediates(golden):
    """Per-step prior intermediates (text encodings, CFG output, latents, every noise draw) vs diffusers'."""
    ref = golden("debug_intermediates")
    debug = {}
    parity.prior_pipeline_outputs(FIXTURE, debug=debug)
    expected = sorted(k for k in ref if k.startswith("prior_case"))
    assert sorted(debug) == expected
    for key in expected:
        if key.split("/")[1].startswith(("noise_", "timesteps", "text_mask")):
            np.testing.assert_array_equal(debug[key], ref[key], err_msg=key)
        else:
            assert_scaled(debug[key], ref[key], 1e-4, key)


def test_run_all_writes_schedulers_npz_when_the_fixture_has_its_goldens(tmp_path, monkeypatch):
    """The wiring only: every producer is stubbed (the real runs are tested above and in test_pipelines.py)."""
    for name in ("tokenizer_outputs", "prior_component_outputs", "decoder_component_outputs",
                 "prior_pipeline_outputs", "inpaint_pipeline_outputs"):
        monkeypatch.setattr(parity, name, lambda *args, **kwargs: {})
    monkeypatch.setattr(parity, "scheduler_outputs", lambda fixture, mode="graph": {"mode": np.array(mode)})
    written = parity.run_all(FIXTURE, tmp_path / "out", log=lambda *_: None, mode="pynative")
    assert str(np.load(written["schedulers"])["mode"]) == "pynative"

    older = tmp_path / "older" / "golden"          # a fixture made before the sampler goldens existed
    older.mkdir(parents=True)
    shutil.copy(FIXTURE / "golden" / "components.npz", older)
    written = parity.run_all(older.parent, tmp_path / "out2", log=lambda *_: None)
    assert "schedulers" not in written and not (tmp_path / "out2" / "schedulers.npz").exists()
