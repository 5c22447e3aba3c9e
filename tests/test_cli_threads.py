"""The CLI's --threads and --wait reach OpenMP in a real process.

libgomp reports its settings when asked (OMP_DISPLAY_ENV=VERBOSE): GOMP_SPINCOUNT is how long
an idle thread spins before it sleeps, 0 for the sleeping policy.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.hf_models import random_hf_llama, write_gguf_from_hf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    hf = random_hf_llama(seed=11, num_attention_heads=4, num_key_value_heads=2)
    return write_gguf_from_hf(hf, tmp_path_factory.mktemp("cli") / "m.gguf")


def spin_count(model, *options, policy=None):
    env = dict(os.environ, OMP_DISPLAY_ENV="VERBOSE")
    env.pop("OMP_WAIT_POLICY", None)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    result = subprocess.run(
        [sys.executable, "-m", "llamaherd", "bench", "-m", str(model), "--prompt-tokens", "8", "--gen-tokens", "2",
         "--threads", "1", *options],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "1 threads" in result.stdout  # --threads reached torch
    found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", result.stderr)
    if found is None:
        pytest.skip("torch's OpenMP is not libgomp: it does not report its wait policy")
    return int(found.group(1))


def test_wait_option_sets_openmp_policy(tiny_gguf):
    spin = spin_count(tiny_gguf)
    assert spin > 0  # default: OpenMP's own, spinning a moment before sleeping
    assert spin_count(tiny_gguf, "--wait", "sleep") == 0
    assert spin_count(tiny_gguf, policy="PASSIVE") == 0  # the user's environment wins over the default
    assert spin_count(tiny_gguf, "--wait", "spin", policy="PASSIVE") == spin  # and an explicit option over it
