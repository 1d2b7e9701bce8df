"""How the cpp backend's CPU kernels use threads: the same values on one thread or several, the same
bits run to run, and no deadlock or wrong value when called from several Python threads at once."""
import subprocess
import sys
import threading

import pytest
import torch
from conftest import assert_close

from tgfr.ops import backends, info_nce, word_region_scores
from tgfr.ops.info_nce import info_nce_reference
from tgfr.ops.word_region import word_region_scores_loop

pytestmark = pytest.mark.skipif(not backends.is_available("cpp", "cpu"), reason="tgfr._C not built")

# Large enough for several work items per call: 5 images, and 40 captions of up to 12 words, so
# more than one caption block of 256 words; InfoNCE B=200 gives 2 row blocks of 112 on 2 threads.
WORD_REGION_SHAPE = (5, 40, 12, 7, 10)
INFO_NCE_SHAPE = (200, 16)


def word_region_inputs(gen, dtype=torch.float64):
    B_v, B_t, T, N, D = WORD_REGION_SHAPE
    words = torch.randn(B_t, T, D, generator=gen, dtype=dtype)
    regions = torch.randn(B_v, N, D, generator=gen, dtype=dtype)
    lengths = torch.randint(T // 2, T + 1, (B_t,), generator=gen)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return words, regions, mask


def info_nce_inputs(gen, dtype=torch.float64):
    B, D = INFO_NCE_SHAPE
    a = torch.nn.functional.normalize(torch.randn(B, D, generator=gen, dtype=dtype), dim=1)
    b = torch.nn.functional.normalize(a + torch.randn(B, D, generator=gen, dtype=dtype), dim=1)
    return a, b, torch.tensor(0.2, dtype=dtype)


def values_and_grads(gen):
    """Forward values and input gradients of both ops on fresh inputs, with a random upstream gradient."""
    words, regions, mask = word_region_inputs(gen)
    words.requires_grad_(), regions.requires_grad_()
    scores = word_region_scores(words, regions, mask, backend="cpp")
    upstream = torch.randn(scores.shape, generator=gen, dtype=scores.dtype)
    scores.backward(upstream)
    a, b, t = info_nce_inputs(gen)
    a.requires_grad_(), b.requires_grad_()
    loss = info_nce(a, b, t, backend="cpp")
    loss.backward()
    return {"scores": scores.detach(), "grad_words": words.grad, "grad_regions": regions.grad,
            "loss": loss.detach(), "grad_a": a.grad, "grad_b": b.grad}


def test_one_thread_and_two_threads_agree():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = values_and_grads(torch.Generator().manual_seed(11))
        torch.set_num_threads(2)
        two = values_and_grads(torch.Generator().manual_seed(11))
    finally:
        torch.set_num_threads(threads)
    # every score and every region gradient has one writer whatever the thread count, and the
    # images' parts of the word gradients are summed in image order; InfoNCE's tile side follows
    # the thread count (so its log-sum-exps merge other column blocks): rounding only
    for name in ("scores", "grad_regions", "grad_words"):
        assert torch.equal(one[name], two[name]), name
    for name in ("loss", "grad_a", "grad_b"):
        assert_close(two[name], one[name], rtol=1e-12, atol=1e-14, msg=name)


def test_the_values_match_the_reference_on_several_threads():
    gen = torch.Generator().manual_seed(12)
    words, regions, mask = word_region_inputs(gen)
    assert_close(word_region_scores(words, regions, mask, backend="cpp"),
                 word_region_scores_loop(words, regions, mask), rtol=1e-10, atol=1e-12)
    a, b, t = info_nce_inputs(gen)
    assert_close(info_nce(a, b, t, backend="cpp"), info_nce_reference(a, b, t), rtol=1e-10, atol=1e-12)


def test_calls_from_several_python_threads_at_once():
    expected = [values_and_grads(torch.Generator().manual_seed(20 + i)) for i in range(4)]
    got, errors = [None] * 4, []

    def run(i):
        try:
            for _ in range(3):
                got[i] = values_and_grads(torch.Generator().manual_seed(20 + i))
        except Exception as error:  # reported below: an exception in a thread would pass silently
            errors.append(error)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(worker.is_alive() for worker in workers), "a call from a Python thread did not return"
    assert not errors, errors
    for want, have in zip(expected, got):
        for name in want:
            assert_close(have[name], want[name], rtol=1e-12, atol=1e-14, msg=name)



# Calls made on ATen's inter-op pool itself, more at once than it has threads: the helpers each
# call queues behind them may never start, and the call must not wait for them.
FORKED_CALLS = """
from typing import List
import torch
from tgfr.ops import info_nce, word_region_scores

@torch.jit.script
def forked(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, words: torch.Tensor,
           regions: torch.Tensor, mask: torch.Tensor) -> List[torch.Tensor]:
    losses = [torch.jit.fork(torch.ops.tgfr.info_nce, a, b, t, ids, 0, True, "cpp") for _ in range(6)]
    scores = [torch.jit.fork(torch.ops.tgfr.word_region_scores, words, regions, mask, 4.0, 5.0, 1e-8, "cpp")
              for _ in range(6)]
    return [torch.jit.wait(f)[0] for f in losses] + [torch.jit.wait(f) for f in scores]

gen = torch.Generator().manual_seed(14)
a, b = torch.randn(300, 16, generator=gen, dtype=torch.float64), torch.randn(300, 16, generator=gen, dtype=torch.float64)
t = torch.tensor(0.2, dtype=torch.float64)
words, regions = torch.randn(40, 12, 10, generator=gen, dtype=torch.float64), torch.randn(5, 7, 10, generator=gen, dtype=torch.float64)
mask = torch.arange(12)[None, :] < torch.randint(6, 13, (40,), generator=gen)[:, None]
out = forked(a, b, t, torch.arange(300), words, regions, mask)
loss, scores = info_nce(a, b, t, backend="cpp"), word_region_scores(words, regions, mask, backend="cpp")
# a pool thread may see another thread count, hence another InfoNCE tile side: rounding only
for x in out[:6]:
    torch.testing.assert_close(x, loss, rtol=1e-12, atol=1e-14)
assert all(torch.equal(x, scores) for x in out[6:]), "word_region_scores"
"""


def test_calls_on_the_inter_op_pool_do_not_deadlock(tmp_path):
    # in a child process, so that a deadlock fails this test instead of hanging the suite; from a
    # file, which TorchScript needs for the source
    script = tmp_path / "forked_calls.py"
    script.write_text(FORKED_CALLS)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# Both ops, forward and backward, called again and again in a fresh process at a fixed thread count.
# float32, ragged captions whose 60 x up to 11 words fill two caption blocks of 256 (the second one
# partly), 13 images; InfoNCE with 1000 rows against 1100 columns, some of one class, in tiles of 256
# (the last ones partial). The first call counts too: the pool's threads run their first items then.
REPEATED_CALLS = """
import sys
import torch
from tgfr.ops import info_nce, word_region_scores

threads, calls = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
gen = torch.Generator().manual_seed(15)
words, regions = torch.randn(60, 11, 24, generator=gen), torch.randn(13, 49, 24, generator=gen)
mask = torch.arange(11)[None, :] < torch.randint(1, 12, (60,), generator=gen)[:, None]
upstream = torch.randn(13, 60, generator=gen)
a = torch.nn.functional.normalize(torch.randn(1000, 16, generator=gen), dim=1)
b = torch.nn.functional.normalize(torch.randn(1100, 16, generator=gen), dim=1)
temperature, class_ids = torch.tensor(0.1), torch.randint(0, 900, (1100,), generator=gen)


def outputs():
    w, r = words.clone().requires_grad_(), regions.clone().requires_grad_()
    scores = word_region_scores(w, r, mask, backend="cpp")
    scores.backward(upstream)
    aa, bb, t = a.clone().requires_grad_(), b.clone().requires_grad_(), temperature.clone().requires_grad_()
    loss = info_nce(aa, bb, t, class_ids, offset=50, backend="cpp")
    loss.backward()
    return {"scores": scores, "grad_words": w.grad, "grad_regions": r.grad, "loss": loss, "grad_a": aa.grad,
            "grad_b": bb.grad, "grad_temperature": t.grad}


first = outputs()
differing = {name for _ in range(calls - 1) for name, value in outputs().items() if not torch.equal(value, first[name])}
print(sorted(differing))
"""


@pytest.mark.parametrize("threads", [2, 3])
def test_repeated_calls_give_the_same_bits(tmp_path, threads):
    script = tmp_path / "repeated_calls.py"
    script.write_text(REPEATED_CALLS)
    result = subprocess.run([sys.executable, str(script), str(threads), "8"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"outputs that differ between calls on {threads} threads: {result.stdout}"
