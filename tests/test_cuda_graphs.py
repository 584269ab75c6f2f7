# SPDX-License-Identifier: Apache-2.0
"""A whole training step (forward, MSE, backward, Adam) captured in one CUDA graph gives
the eager step's losses and parameters: the op allocates through torch's caching
allocator, launches on the current stream and makes no host synchronisation."""
import pytest
import torch
import torch.nn.functional as F

import gaussfield
from conftest import requires_cuda


def fresh(seed, n, **kw):
    torch.manual_seed(seed)
    model = gaussfield.GaussianField(n, **kw).cuda()
    return model, torch.optim.Adam(model.parameters(), lr=1e-2, capturable=True)


def batches(k, b, c):
    g = torch.Generator().manual_seed(7)
    return [((torch.rand(b, 3, generator=g) * 10).cuda(),
             torch.rand(b, *([c] if c else []), generator=g).cuda()) for _ in range(k)]


@requires_cuda
@pytest.mark.parametrize("cutoff, channels", [(None, 0), (4.0, 0), (None, 3)])
def test_training_step_in_one_cuda_graph_matches_eager(cutoff, channels):
    data = batches(8, 500, channels)

    eager, eager_opt = fresh(0, 64, cutoff=cutoff)
    graphed, graphed_opt = fresh(0, 64, cutoff=cutoff)
    if channels:  # a field with feature channels
        for m in (eager, graphed):
            m.weights = torch.nn.Parameter(torch.linspace(0.5, 1.5, 64 * channels).reshape(64, channels).cuda())
        eager_opt = torch.optim.Adam(eager.parameters(), lr=1e-2, capturable=True)
        graphed_opt = torch.optim.Adam(graphed.parameters(), lr=1e-2, capturable=True)

    def step(model, opt, x, t):
        loss = F.mse_loss(model(x), t)
        loss.backward()
        opt.step()
        return loss

    eager_losses = []
    for x, t in data:
        eager_opt.zero_grad(set_to_none=True)
        eager_losses.append(step(eager, eager_opt, x, t).item())

    static_x, static_t = data[0][0].clone(), data[0][1].clone()
    graphed_losses = []
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the warm-up steps are real steps: batches 0 .. 2
        for x, t in data[:3]:
            graphed_opt.zero_grad(set_to_none=True)
            graphed_losses.append(step(graphed, graphed_opt, x, t).item())
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graphed_opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = step(graphed, graphed_opt, static_x, static_t)
    for x, t in data[3:]:
        static_x.copy_(x)
        static_t.copy_(t)
        graph.replay()
        graphed_losses.append(static_loss.item())

    torch.testing.assert_close(graphed_losses, eager_losses, rtol=1e-6, atol=0)
    for a, b in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
