"""Training a learnable Gaussian field end to end: the user's script, one line changed.

The model is the notebook's FastLearnableGaussianField, unchanged (notebook_models.py).
The only change to the script is the line marked below, which routes its forward (and
so its backward) through gaussfield's fused operator.  With --compare, the first steps
also run with the notebook's own forward from the same initial state, to show that the
losses agree.

    python examples/train_end_to_end.py                     # GPU if there is one
    python examples/train_end_to_end.py --device cpu --steps 100
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

from notebook_models import FastLearnableGaussianField

import gaussfield

notebook_forward = FastLearnableGaussianField.forward
FastLearnableGaussianField.forward = gaussfield.fused_forward  # <- the one change


def target_field(x: torch.Tensor) -> torch.Tensor:
    """What the field should learn: two blobs and a ridge in a 10^3 volume."""
    c1 = torch.tensor([3.0, 3.0, 5.0], device=x.device)
    c2 = torch.tensor([7.0, 6.0, 4.0], device=x.device)
    blob = torch.exp(-((x - c1) ** 2).sum(-1) / 2.0) + 0.7 * torch.exp(-((x - c2) ** 2).sum(-1) / 1.0)
    ridge = 0.5 * torch.exp(-((x[..., 0] - x[..., 1]) ** 2) / 0.5) * torch.sigmoid(x[..., 2] - 5)
    return blob + ridge


def train(model, steps, batch, lr, device, log_every, generator):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        x = torch.rand(batch, 3, generator=generator).to(device) * 10.0
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), target_field(x))
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  step {step:5d}  loss {losses[-1]:.6f}")
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--gaussians", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--compare", type=int, default=5, metavar="K",
                    help="also run the first K steps with the notebook's forward (0: skip)")
    args = ap.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = FastLearnableGaussianField(args.gaussians).to(device)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    print(f"training {args.gaussians} Gaussians on {device}, batches of {args.batch} points")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    losses = train(model, args.steps, args.batch, args.lr, device, max(1, args.steps // 10),
                   torch.Generator().manual_seed(1))
    sync()
    per_step = (time.perf_counter() - t0) / args.steps
    print(f"gaussfield: {per_step * 1e3:.2f} ms per step, loss {losses[0]:.5f} -> {losses[-1]:.5f}")
    ok = math.isfinite(losses[-1]) and losses[-1] < losses[0]

    if args.compare:
        model.load_state_dict(initial)
        fused = train(model, args.compare, args.batch, args.lr, device, 0, torch.Generator().manual_seed(1))
        FastLearnableGaussianField.forward = notebook_forward
        model.load_state_dict(initial)
        sync()
        t0 = time.perf_counter()
        reference = train(model, args.compare, args.batch, args.lr, device, 0, torch.Generator().manual_seed(1))
        sync()
        ref_step = (time.perf_counter() - t0) / args.compare
        FastLearnableGaussianField.forward = gaussfield.fused_forward
        worst = max(abs(a - b) / abs(b) for a, b in zip(fused, reference))
        print(f"notebook forward: {ref_step * 1e3:.2f} ms per step; first {args.compare} losses agree "
              f"to {worst:.1e} (relative)")
        ok = ok and worst < 1e-4
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
