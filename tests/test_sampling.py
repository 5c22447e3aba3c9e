"""The sampler's penalties against llama.cpp's definition (llama_sampler_penalties_apply):
over the last `repeat_last_n` ids, a seen token's logit is multiplied by the repeat penalty
when <= 0 and divided when > 0, then lowered by count * frequency + (count > 0) * presence."""

import pytest
import torch

from llamaherd.generate import Sampler, SamplingParams, apply_penalties


def llama_cpp_penalties(logits, recent, repeat, frequency, presence):
    out = list(logits)
    for token in set(recent):
        count = recent.count(token)
        out[token] = out[token] * repeat if out[token] <= 0 else out[token] / repeat
        out[token] -= count * frequency + (count > 0) * presence
    return out


@pytest.mark.parametrize("repeat,frequency,presence", [(1.0, 0.5, 0.0), (1.0, 0.0, 1.5), (1.3, 0.4, -0.2), (1.0, -1.0, 0.0)])
def test_penalties_follow_llama_cpp(repeat, frequency, presence):
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0)) * 3
    recent = [3, 7, 7, 7, 12, 3, 49, 0]
    got = apply_penalties(logits, recent, repeat, frequency, presence)
    expected = torch.tensor(llama_cpp_penalties(logits.tolist(), recent, repeat, frequency, presence))
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(got[[1, 2, 4]], logits[[1, 2, 4]])  # unseen tokens untouched


def test_penalties_look_only_at_the_last_n_ids():
    logits = torch.zeros(10)
    logits[4] = 1.0
    sampler = Sampler(SamplingParams(temperature=0, frequency_penalty=2.0, repeat_last_n=2))
    assert sampler(logits, [4, 1, 2]) == 4  # 4 is outside the window: still the best
    assert sampler(logits, [1, 2, 4]) != 4  # inside it: 1 - 2 < 0


def test_penalties_must_be_finite():
    with pytest.raises(ValueError, match="frequency_penalty"):
        SamplingParams(frequency_penalty=float("nan"))
