"""Time i2x's attribution core against its floor and against pytorch-grad-cam, on the same batches.

Prints two ratios (median and min over interleaved repeats, after a warm-up):

(a) ``Attributor.attribute`` (probs + features + GradCAM, GradCAM++, LayerCAM) over a bare
    forward+backward to the target layer (a hook makes the activation a leaf; autograd.grad of the
    target logits w.r.t. it). Goal <= 1.15.
(b) pytorch-grad-cam computing the same three methods as a user would (three CAM objects, each its
    own forward+backward) over ``attribute``. Goal >= 2.

    python benchmarks/extract.py --model small-cnn
    python benchmarks/extract.py --model resnet18 --threads 1

On a shared, oversubscribed CPU machine, timings with more than one thread swing with other
load (each parallel op can wait a scheduler slice); ``--threads 1`` gives steadier ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from i2x.attribution import Attributor, find_target_layer, get_layer, METHODS
from i2x.io.models import SmallCNN

# model name -> (factory, input channels, default input size, default batch size)
SETUPS = {
    "small-cnn": (lambda: SmallCNN(num_classes=10, in_channels=1), 1, 32, 256),
    "resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=10), 3, 64, 64),
}


def bare_floor(model: torch.nn.Module, layer: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The floor: one forward with the target activation made a leaf, one backward to it only."""
    kept: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        kept.append(out.detach().requires_grad_())
        return kept[-1]

    layer.register_forward_hook(hook)

    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        kept.clear()
        logits = model(x)
        torch.autograd.grad(logits.gather(1, y[:, None]).sum(), kept[0])

    return run


def grad_cam_package(model: torch.nn.Module, layer: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """pytorch-grad-cam as a user would call it: one CAM object per method, each with its own pass."""
    cams = [cls(model, [layer]) for cls in (GradCAM, GradCAMPlusPlus, LayerCAM)]

    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        targets = [ClassifierOutputTarget(int(c)) for c in y]
        for cam in cams:
            cam(x, targets)

    return run


def seconds_per_pass(fn: Callable[[torch.Tensor, torch.Tensor], None], batches: list, clock: Callable[[], float]) -> float:
    """Seconds of one pass of ``fn`` over all batches, by ``clock``."""
    start = clock()
    for x, y in batches:
        fn(x, y)
    if batches and batches[0][0].is_cuda:
        torch.cuda.synchronize()
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SETUPS), default="small-cnn")
    parser.add_argument("--batches", type=int, default=2, help="batches per timed pass")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 small-cnn, 64 resnet18")
    parser.add_argument("--input-size", type=int, default=None, help="default: 32 small-cnn, 64 resnet18")
    parser.add_argument("--layer", default=None, help="target layer (default: find_target_layer, D1 in docs/ARCHITECTURE.md)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time, steadier than wall time on a shared CPU machine")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    factory, channels, size, batch_size = SETUPS[args.model]
    size = args.input_size or size
    batch_size = args.batch_size or batch_size
    torch.manual_seed(0)
    model = factory().to(args.device).eval()
    batches = [
        (torch.randn(batch_size, channels, size, size, device=args.device),
         torch.randint(0, 10, (batch_size,), device=args.device))
        for _ in range(args.batches)
    ]

    layer_name = args.layer or find_target_layer(model, batches[0][0][:2])
    attributor = Attributor(model, layer_name, METHODS)
    ours = lambda x, y: attributor.attribute(x, "true", y, want_features=True)  # noqa: E731
    # Separate model copies keep each contender's hooks off the others' runs.
    floor = bare_floor(model_copy := factory().to(args.device).eval(), get_layer(model_copy, layer_name))
    model_copy.load_state_dict(model.state_dict())
    package_model = factory().to(args.device).eval()
    package_model.load_state_dict(model.state_dict())
    package = grad_cam_package(package_model, get_layer(package_model, layer_name))

    contenders = {"floor": floor, "ours": ours, "pytorch-grad-cam": package}
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    for fn in contenders.values():  # warm-up
        seconds_per_pass(fn, batches, clock)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all alike
        for name, fn in contenders.items():
            times[name].append(seconds_per_pass(fn, batches, clock))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # less sensitive to other load on a shared machine

    print(f"model {args.model}, layer {layer_name}, input {channels}x{size}x{size}, "
          f"{args.batches} batches of {batch_size}, {args.repeats} repeats, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, {args.clock} clock")
    for name in contenders:
        print(f"  {name:18s} median {med[name] * 1000:8.1f} ms per pass, min {best[name] * 1000:8.1f}"
              f"   (all: {', '.join(f'{s * 1000:.0f}' for s in times[name])})")
    print(f"(a) ours / bare forward+backward to the layer: median {med['ours'] / med['floor']:.3f}, "
          f"min {best['ours'] / best['floor']:.3f}  (goal <= 1.15)")
    print(f"(b) pytorch-grad-cam (3 methods) / ours:        median {med['pytorch-grad-cam'] / med['ours']:.2f}, "
          f"min {best['pytorch-grad-cam'] / best['ours']:.2f}  (goal >= 2)")


if __name__ == "__main__":
    main()
