"""On-device task samplers (``sample_torch``): exact posteriors on the batches they draw, the same
distribution as the CPU samplers (chi-square on token frequencies at fixed seeds), and, on a GPU,
the same checks with the batches drawn there."""

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from labcore.tasks.bijection import BijectionTask, device_batches, on_device
from labcore.tasks.hmm import HMMTask, forward_filter
from labcore.tasks.recall import RecallTask

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
P_MIN = 1e-3  # a fixed seed: each test is one draw; 1e-3 keeps a false alarm rare and a real bias visible


def gen(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


def freq_table(tokens: torch.Tensor, vocab: int) -> np.ndarray:
    """(positions × vocab) counts of a (B, T) token batch."""
    t = tokens.cpu()
    return np.stack([np.bincount(t[:, j].numpy(), minlength=vocab) for j in range(t.shape[1])])


def assert_same_distribution(a: torch.Tensor, b: torch.Tensor, vocab: int):
    """Two-sample chi-square per position on the token counts (columns empty in both dropped)."""
    fa, fb = freq_table(a, vocab), freq_table(b, vocab)
    for j in range(fa.shape[0]):
        table = np.stack([fa[j], fb[j]])
        table = table[:, table.sum(0) > 0]
        if table.shape[1] < 2:
            assert (fa[j] > 0).tolist() == (fb[j] > 0).tolist()
            continue
        p = chi2_contingency(table)[1]
        assert p > P_MIN, f"position {j}: chi-square p = {p:.2g}"


def brute_force_bijection_posterior(keys, values, V):
    """p(pi(k_t) = y | pairs < t) by enumerating all V! bijections consistent with the pairs."""
    out = np.zeros((len(keys), V))
    perms = list(itertools.permutations(range(V)))
    for t in range(len(keys)):
        ok = [p for p in perms if all(p[keys[s]] == values[s] for s in range(t))]
        for p in ok:
            out[t, p[keys[t]]] += 1 / len(ok)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("replacement", [False, True])
def test_bijection_sample_torch_posterior_is_exact(device, replacement):
    task = BijectionTask(V=5, L=5 if not replacement else 7, replacement=replacement)
    b = task.sample_torch(6, gen(device, 11), device)
    assert b.tokens.device.type == device and b.posterior.device.type == device
    for i in range(6):
        ref = brute_force_bijection_posterior(b.keys[i].tolist(), b.values[i].tolist(), 5)
        np.testing.assert_allclose(b.posterior[i].cpu().numpy(), ref, atol=1e-12)
    assert (b.tokens[:, 1::2] - 5 == b.values[:, :-1]).all() and (b.targets[:, 0::2] - 5 == b.values).all()


@pytest.mark.parametrize("device", DEVICES)
def test_bijection_sample_torch_has_the_cpu_distribution(device):
    task = BijectionTask(V=8, L=6)
    a = task.sample_torch(3000, gen(device, 1), device).tokens
    b = task.sample(3000, torch.Generator().manual_seed(2)).tokens
    assert_same_distribution(a, b, task.vocab_size)


def test_bijection_sample_torch_is_sample_draw_for_draw_on_the_cpu():
    task = BijectionTask(V=7, L=7)
    a, b = task.sample_torch(50, gen("cpu", 5)), task.sample(50, gen("cpu", 5))
    assert all(torch.equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))


@pytest.mark.parametrize("device", DEVICES)
def test_hmm_sample_torch_posterior_is_the_forward_filter(device):
    task = HMMTask(S=4, O=3, K=12)
    b = task.sample_torch(64, gen(device, 7), device)
    assert b.tokens.device.type == device
    ref = forward_filter(b.T.cpu(), b.E.cpu(), b.observations.cpu())
    np.testing.assert_allclose(b.posterior.cpu().numpy(), ref.numpy(), rtol=0, atol=1e-12)
    T, E = task.decode_header(b.tokens.cpu())
    assert torch.equal(T, b.T.cpu()) and torch.equal(E, b.E.cpu())
    assert torch.equal(b.tokens[:, b.obs_positions] - 100, b.observations)
    assert torch.allclose(b.posterior.sum(-1), torch.ones((), dtype=torch.float64, device=device))


def test_hmm_sample_torch_is_sample_draw_for_draw_on_the_cpu():
    task = HMMTask()
    a, b = task.sample_torch(40, gen("cpu", 3)), task.sample(40, gen("cpu", 3))
    for name in ("tokens", "obs_positions", "T", "E", "observations", "states"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.posterior, b.posterior, atol=1e-13, rtol=0)
    torch.testing.assert_close(a.entropy_bits, b.entropy_bits, atol=1e-12, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_hmm_sample_torch_has_the_cpu_distribution(device):
    task = HMMTask(S=3, O=4, K=8)
    a = task.sample_torch(3000, gen(device, 1), device)
    b = task.sample(3000, torch.Generator().manual_seed(2))
    assert_same_distribution(a.tokens, b.tokens, task.vocab_size)
    assert_same_distribution(a.states, b.states, task.S)


@pytest.mark.parametrize("device", DEVICES)
def test_recall_sample_torch(device):
    task = RecallTask(n_keys=12, n_values=9, n_pairs=5)
    a = task.sample_torch(3000, gen(device, 1), device)
    b = task.sample(3000, torch.Generator().manual_seed(2))
    assert_same_distribution(a.tokens, b.tokens, task.vocab_size)
    assert_same_distribution(a.query_pair[:, None], b.query_pair[:, None], task.n_pairs)
    # the posterior is the point mass on the value bound to the queried key
    bound = torch.gather(a.values, 1, a.query_pair[:, None]).squeeze(1)
    assert torch.equal(a.posterior.argmax(-1), bound) and torch.equal(a.answer, bound + task.n_keys)


def test_a_generator_on_another_device_is_refused():
    with pytest.raises(ValueError, match="Generator"):
        on_device(torch.Generator().manual_seed(0), "cuda")
    assert on_device(g := torch.Generator(), None) is g


def test_device_batches_trains_reproducibly():
    from labcore import GPT, GPTConfig
    from labcore.training.trainer import TrainConfig, seeded_model, train

    task = BijectionTask(V=5, L=5)

    def run():
        model = seeded_model(lambda: GPT(GPTConfig(vocab_size=10, n_ctx=9, d_model=16, n_layers=1, n_heads=2)), 0)
        fn = device_batches(lambda g: task.sample_torch(8, g, "cpu"), "cpu")
        return train(model, fn, TrainConfig(steps=5, sync_every=5, seed=1)).metrics["loss"]

    np.testing.assert_array_equal(run(), run())
