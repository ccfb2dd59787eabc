"""Training throughput of LA-DNN on the CPU: the project's trainer against the reference loop.

The reference loop trains the way LA-DNN's published `Code/train.py` does. A torch `Dataset`
opens each file with PIL, converts it to RGB and resizes it to 224x224 on every access, then
applies torchvision `RandomAffine(0, shear=0.2, scale=(0.8, 1.2))`, a horizontal flip, `ToTensor`
and ImageNet normalisation. A `DataLoader` draws shuffled batches of 32 without worker processes,
and the model trains in the default memory format in float32 with Adam at 5e-5 and the reference
per-sample BCE loss on sigmoid outputs.

The project's side is `ladnn.training.trainer.train_model`: images decoded and resized once into a
uint8 tensor (what `ImageCache` stores), batch augmentation on tensors, channels_last, one torch
thread per core, and the step in the precision that `train.precision` resolves to (`--precision`,
default "auto": bfloat16 autocast on a CPU with AMX or AVX512-BF16, else float32). Both sides
train the same `LADNN` model at the same batch size on the same real images, interleaved in one
process, so both run under the same load and their ratio stays comparable.

The script also measures the machine's float32 and bfloat16 matrix-multiply peaks (`torch.matmul`
of two 4096x4096 matrices), counts each model's training FLOPs per image with
`torch.utils.flop_counter.FlopCounterMode`, and times two variants of the trainer's step in a
loop of its own: bfloat16 autocast and `torch.compile`.

    .venv/bin/python bench/train_throughput.py                # 3 models, 192 images, 3 repeats
    .venv/bin/python bench/train_throughput.py --quick        # Lite0, 64 images, 1 repeat

`--set KEY=VALUE` changes the trainer's side only, for example `--set train.freeze_batchnorm=true
--set train.freeze_stages=3` to time what the `cpu` profile and frozen early stages save. The
reference loop always trains every layer.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from common import (
    add_common_arguments,
    datasets_dir,
    load_average,
    machine_info,
    median,
    write_result,
)
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from ladnn.config import load_config
from ladnn.data.images import normalise_image
from ladnn.models.ladnn import LADNN, build_model, ladnn_loss
from ladnn.training.images import augment_batch, load_image_tensor, to_model_input
from ladnn.training.trainer import SplitData, train_model, training_precision

MODELS = ("efficientnet_lite0", "resnet18", "densenet121")
BATCH_SIZE = 32
IMAGE_SIZE = 224
# LA-DNN's published training script: ImageNet statistics, Adam lr 5e-5, weight decay 5e-4,
# COVID term weighted 5.
REFERENCE_MEAN = [0.485, 0.456, 0.406]
REFERENCE_STD = [0.229, 0.224, 0.225]
REFERENCE_LR = 5e-5
REFERENCE_WEIGHT_DECAY = 5e-4
MATMUL_SIZE = 4096
WEIGHTS_DIR = Path("/tmp/ladnn-bench/throughput-weights")


def select_images(release: Path, count: int) -> list[tuple[Path, int]]:
    """Take `count` release images, alternating COVID and negative, in sorted file order."""
    covid = sorted((release / "CT_COVID").iterdir())
    negative = sorted((release / "CT_NonCOVID").iterdir())
    chosen: list[tuple[Path, int]] = []
    for pair in zip(covid, negative, strict=False):
        chosen.extend([(pair[0], 1), (pair[1], 0)])
    if len(chosen) < count:
        raise SystemExit(f"the release has {len(chosen)} paired images, fewer than {count}")
    return chosen[:count]


def decode_once(images: list[tuple[Path, int]]) -> tuple[torch.Tensor, float]:
    """Decode and resize every image as import plus `ImageCache` do; return pixels and seconds."""
    started = time.perf_counter()
    tensors = []
    for path, _ in images:
        normalised = normalise_image(path.read_bytes(), path.name)
        tensors.append(load_image_tensor(normalised.image, IMAGE_SIZE))
    return torch.stack(tensors), time.perf_counter() - started


def split_data(images: list[tuple[Path, int]], pixels: torch.Tensor) -> SplitData:
    labels = [label for _, label in images]
    return SplitData(
        frame=pd.DataFrame({"image_id": [path.stem for path, _ in images], "label": labels}),
        pixels=pixels,
        covid=torch.tensor(labels, dtype=torch.float32),
        # Lesions unknown: the COVID term alone, as for every negative of the release.
        lesions=torch.full((len(images), 5), math.nan),
    )


class ReferenceDataset(Dataset):
    """Decode, convert and resize with PIL on every access, as LA-DNN's `my_Data_Set` does."""

    def __init__(self, images: list[tuple[Path, int]]):
        self.images = images
        self.transform = transforms.Compose(
            [
                transforms.Resize((IMAGE_SIZE, IMAGE_SIZE)),
                transforms.RandomAffine(0, shear=0.2, scale=(0.8, 1.2)),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(REFERENCE_MEAN, REFERENCE_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.images[index]
        image = Image.open(path).convert("RGB")
        target = torch.zeros(6)
        target[0] = label
        return self.transform(image), target


def reference_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LA-DNN's loss: per-element BCE on sigmoid outputs, lesion terms only for samples with a
    lesion, a Python loop over the samples, the COVID column weighted 5."""
    elements = F.binary_cross_entropy(output, target, reduction="none")
    loss = torch.zeros_like(target)
    covid_only = torch.zeros_like(elements)
    covid_only[:, 0] = elements[:, 0]
    for i in range(target.shape[0]):
        with_lesions = (target[i][1:] > 0).any().float()
        loss[i] = (1 - with_lesions) * covid_only[i] + with_lesions * elements[i]
    loss[:, 0] = 5 * loss[:, 0]
    return loss.mean()


def train_reference_epoch(model: LADNN, images: list[tuple[Path, int]], seed: int) -> float:
    """Train one epoch the reference way; return images per second over the epoch."""
    torch.manual_seed(seed)
    loader = DataLoader(ReferenceDataset(images), batch_size=BATCH_SIZE, shuffle=True)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=REFERENCE_LR, weight_decay=REFERENCE_WEIGHT_DECAY
    )
    model.train()
    seen = 0
    started = time.perf_counter()
    for data, target in loader:
        output = torch.sigmoid(model(data))
        loss = reference_loss(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(data)
    return seen / (time.perf_counter() - started)


def random_weights_file(backbone: str) -> Path:
    """Save a seeded random initialisation of `backbone` and return the file.

    Throughput does not depend on the weights' values, and the ImageNet weights of ResNet-18 and
    DenseNet-121 are not available offline. Starting from a file, the trainer treats the backbone
    as pretrained, so the settings that apply only to pretrained starts (`train.freeze_batchnorm`,
    `train.freeze_stages`) take effect as they would from ImageNet weights.
    """
    path = WEIGHTS_DIR / f"{backbone}-random.pt"
    if not path.is_file():
        torch.manual_seed(0)
        model, _ = build_model(backbone, pretrained=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.backbone.state_dict(), path)
    return path


def trainer_config(
    backbone: str,
    epochs: int,
    seed: int = 0,
    precision: str = "float32",
    overrides: tuple[str, ...] = (),
):
    return load_config(
        profile="short",
        overrides=[
            f"model.backbone={backbone}",
            f"model.weights_file={random_weights_file(backbone)}",
            f"train.epochs={epochs}",
            f"train.batch_size={BATCH_SIZE}",
            f"train.image_size={IMAGE_SIZE}",
            f"train.seed={seed}",
            f"train.precision={precision}",
            *overrides,
        ],
    )


def train_project_epoch(
    backbone: str,
    train: SplitData,
    val: SplitData,
    seed: int,
    precision: str,
    overrides: tuple[str, ...] = (),
) -> tuple[float, str]:
    """Train one epoch with the project's trainer. Return its own images-per-second figure and
    the precision its step ran in."""
    cfg = trainer_config(backbone, epochs=1, seed=seed, precision=precision, overrides=overrides)
    outcome = train_model(cfg, train, val, progress=False)
    return float(outcome.history[-1]["train_images_per_s"]), outcome.precision


def step_variant_loop(
    model: LADNN,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    *,
    bfloat16: bool,
    steps: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> tuple[float, float]:
    """Run the trainer's step (augment, channels_last, forward, loss, backward, AdamW) `steps`
    times after one untimed step; return images per second and the first step's seconds."""
    cfg = trainer_config("efficientnet_lite0", epochs=1).train
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(0)
    lesions = torch.full((BATCH_SIZE, 5), math.nan)
    model.train()

    def step(index: torch.Tensor) -> None:
        batch = augment_batch(
            pixels[index],
            generator,
            scale=(cfg.scale_min, cfg.scale_max),
            hflip=cfg.hflip,
            rotate_degrees=cfg.rotate_degrees,
            translate=cfg.translate,
            intensity_jitter=cfg.intensity_jitter,
        )
        inputs = to_model_input(batch, mean, std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            logits = model(inputs)
        loss = ladnn_loss(logits.float(), labels[index], lesions[: len(index)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    batches = [
        torch.arange(start, start + BATCH_SIZE) % len(pixels)
        for start in range(0, steps * BATCH_SIZE, BATCH_SIZE)
    ]
    first_started = time.perf_counter()
    step(batches[0])
    first_seconds = time.perf_counter() - first_started
    started = time.perf_counter()
    for index in batches:
        step(index)
    return steps * BATCH_SIZE / (time.perf_counter() - started), first_seconds


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    bias,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """Count the FLOPs of a convolution's backward pass, grouped convolutions included.

    Each of the input gradient and the weight gradient costs as much as the forward convolution,
    2 * prod(grad_out) * prod(weight[1:]) (weight[1] is the input channels per group).
    """
    # NOTE: torch 2.14's own formula for aten.convolution_backward ignores `groups`, so it
    # counts a depthwise convolution's weight gradient as a dense one (EfficientNet-Lite0 then
    # shows 31 GFLOP of backward per image against 0.77 GFLOP forward).
    if transposed:
        forward = 2 * math.prod(x_shape) * math.prod(w_shape[1:])
    else:
        forward = 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def training_flops_per_image(
    backbone: str, *, batch_size: int = BATCH_SIZE, image_size: int = IMAGE_SIZE
) -> dict[str, float]:
    """Count the forward and the whole training step's FLOPs of one batch, per image."""
    model, _ = build_model(backbone, pretrained=False)
    model = model.to(memory_format=torch.channels_last).train()
    inputs = torch.randn(batch_size, 3, image_size, image_size).contiguous(
        memory_format=torch.channels_last
    )
    counter = FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops}
    )
    with counter:
        outputs = model(inputs)
        forward = counter.get_total_flops()
        outputs.sum().backward()
    return {
        "forward": forward / batch_size,
        "training": counter.get_total_flops() / batch_size,
    }


def matmul_peak(repeats: int, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Measure the GFLOP/s of `torch.matmul` on two MATMUL_SIZE square matrices of `dtype`."""
    first = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype)
    second = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype)
    torch.matmul(first, second)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(first, second)
        rates.append(2 * MATMUL_SIZE**3 / (time.perf_counter() - started) / 1e9)
    return {"gflops_median": median(rates), "gflops_max": max(rates), "repeats": repeats}


def warm_up(backbone: str, pixels: torch.Tensor) -> None:
    """Run one untimed step in each memory format, so oneDNN's kernel caches hold both."""
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model, loaded = build_model(backbone, pretrained=False)
        model = model.to(memory_format=memory_format).train()
        inputs = to_model_input(pixels[:BATCH_SIZE], loaded.spec.mean, loaded.spec.std)
        model(inputs.contiguous(memory_format=memory_format)).sum().backward()


def measure_model(
    backbone: str,
    images: list[tuple[Path, int]],
    train: SplitData,
    val: SplitData,
    repeats: int,
    variants: list[str],
    variant_steps: int,
    peaks: dict[str, float],
    precision: str,
    overrides: tuple[str, ...] = (),
) -> dict:
    warm_up(backbone, train.pixels)
    ours, reference, loads, precisions = [], [], [], set()
    for repeat in range(repeats):
        loads.append(load_average())
        # Alternate the order, so a change of load over time hits both sides alike.
        if repeat % 2 == 0:
            rate, used = train_project_epoch(backbone, train, val, repeat, precision, overrides)
            model, _ = build_model(backbone, pretrained=False)
            reference.append(train_reference_epoch(model, images, seed=repeat))
        else:
            model, _ = build_model(backbone, pretrained=False)
            reference.append(train_reference_epoch(model, images, seed=repeat))
            rate, used = train_project_epoch(backbone, train, val, repeat, precision, overrides)
        ours.append(rate)
        precisions.add(used)
        logging.info(
            "%s repeat %d: trainer %.1f img/s (%s), reference %.1f img/s (load %.2f)",
            backbone,
            repeat + 1,
            ours[-1],
            used,
            reference[-1],
            loads[-1],
        )
    ratios = [a / b for a, b in zip(ours, reference, strict=True)]
    counted = training_flops_per_image(backbone)
    flops = counted["training"]
    (trainer_precision,) = precisions
    result = {
        "images_per_epoch": len(images),
        "trainer_precision": trainer_precision,
        "trainer_images_per_s": ours,
        "reference_images_per_s": reference,
        "ratio_per_repeat": ratios,
        "trainer_median": median(ours),
        "reference_median": median(reference),
        "ratio_median": median(ratios),
        "reaches_3x": median(ratios) >= 3.0,
        "forward_gflop_per_image": counted["forward"] / 1e9,
        "training_gflop_per_image": flops / 1e9,
        "trainer_gflops": median(ours) * flops / 1e9,
        # Each side against the peak of the precision it computes in.
        "trainer_fraction_of_matmul_peak": median(ours) * flops / 1e9 / peaks[trainer_precision],
        "reference_fraction_of_matmul_peak": median(reference) * flops / 1e9 / peaks["float32"],
        "load_average_1min": loads,
    }

    if variants:
        result["step_variants"] = measure_variants(
            backbone, train, variants, variant_steps, repeats
        )
    return result


def measure_variants(
    backbone: str, train: SplitData, variants: list[str], steps: int, repeats: int
) -> dict:
    """Time the trainer's step as float32, bfloat16 autocast and torch.compile, interleaved."""
    rates: dict[str, list[float]] = {name: [] for name in ["float32", *variants]}
    first_steps: dict[str, list[float]] = {name: [] for name in rates}
    loads = []
    for _ in range(repeats):
        loads.append(load_average())
        for name in rates:
            model, loaded = build_model(backbone, pretrained=False)
            model = model.to(memory_format=torch.channels_last)
            runner = torch.compile(model) if name.startswith("compile") else model
            rate, first = step_variant_loop(
                runner,
                train.pixels,
                train.covid,
                bfloat16=name.endswith("bfloat16"),
                steps=steps,
                mean=loaded.spec.mean,
                std=loaded.spec.std,
            )
            rates[name].append(rate)
            first_steps[name].append(first)
            logging.info("%s %s: %.1f img/s, first step %.1f s", backbone, name, rate, first)
    return {
        "steps_timed": steps,
        "images_per_s": rates,
        "median_images_per_s": {name: median(values) for name, values in rates.items()},
        "speedup_over_float32": {
            name: median(values) / median(rates["float32"]) for name, values in rates.items()
        },
        "first_step_seconds": first_steps,
        "load_average_1min": loads,
    }


def check_bfloat16_outputs(backbone: str, pixels: torch.Tensor) -> dict[str, float]:
    """Compare the sigmoid outputs of one model in float32 and under bfloat16 autocast."""
    model, loaded = build_model(backbone, pretrained=False)
    model = model.to(memory_format=torch.channels_last).eval()
    inputs = to_model_input(pixels[:BATCH_SIZE], loaded.spec.mean, loaded.spec.std)
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        exact = torch.sigmoid(model(inputs))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            approximate = torch.sigmoid(model(inputs).float())
    difference = (exact - approximate).abs()
    return {
        "max_abs_difference": float(difference.max()),
        "mean_abs_difference": float(difference.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--models", nargs="+", default=None, help=f"Backbones; default {MODELS}.")
    parser.add_argument("--images", type=int, default=None, help="Images per epoch (default 192).")
    parser.add_argument("--repeats", type=int, default=None, help="Repeats (default 3).")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=None,
        choices=["bfloat16", "compile", "compile-bfloat16"],
        help="Step variants timed on the first model; default bfloat16 and compile (none with "
        "--quick).",
    )
    parser.add_argument(
        "--variant-steps", type=int, default=None, help="Timed steps per variant (default 5)."
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="The trainer's train.precision (default auto).",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A configuration override for the trainer's side, e.g. train.freeze_stages=3; "
        "repeatable.",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("ladnn").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)

    models = args.models or (["efficientnet_lite0"] if args.quick else list(MODELS))
    count = args.images or (64 if args.quick else 192)
    repeats = args.repeats or (1 if args.quick else 3)
    variants = (
        args.variants
        if args.variants is not None
        else (
            []
            if args.quick
            else [
                "bfloat16",
                "compile",
            ]
        )
    )
    variant_steps = args.variant_steps or (2 if args.quick else 5)
    release = datasets_dir(args.datasets) / "covid-ct"
    torch.set_num_threads(torch.get_num_threads())

    machine = machine_info()
    peak = matmul_peak(3 if args.quick else 5)
    peaks = {"float32": peak["gflops_median"]}
    # A CPU without bfloat16 units emulates bfloat16 products at a few GFLOP/s, so that peak
    # takes minutes to measure. It is measured only when the trainer or a step variant uses it.
    uses_bfloat16 = training_precision(args.precision, torch.device("cpu")) == "bfloat16" or any(
        "bfloat16" in variant for variant in variants
    )
    peak_bfloat16 = matmul_peak(3 if args.quick else 5, torch.bfloat16) if uses_bfloat16 else None
    if peak_bfloat16 is not None:
        peaks["bfloat16"] = peak_bfloat16["gflops_median"]
    images = select_images(release, count)
    pixels, decode_seconds = decode_once(images)
    train = split_data(images, pixels)
    val = split_data(images[:BATCH_SIZE], pixels[:BATCH_SIZE])
    per_model = {}
    for index, backbone in enumerate(models):
        per_model[backbone] = measure_model(
            backbone,
            images,
            train,
            val,
            repeats,
            variants if index == 0 else [],
            variant_steps,
            peaks,
            args.precision,
            tuple(args.overrides),
        )
    result = {
        "benchmark": "train_throughput",
        "machine": machine,
        "settings": {
            "batch_size": BATCH_SIZE,
            "image_size": IMAGE_SIZE,
            "images_per_epoch": count,
            "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
            "precision": args.precision,
            "trainer_overrides": args.overrides,
        },
        "matmul_peak_float32": peak,
        "matmul_peak_bfloat16": peak_bfloat16 or {},
        "decode_once": {
            "images": count,
            "seconds": decode_seconds,
            "images_per_s": count / decode_seconds,
        },
        "models": per_model,
        "load_average_1min_end": load_average(),
    }
    if "bfloat16" in variants:
        result["bfloat16_output_difference"] = check_bfloat16_outputs(models[0], pixels)
    write_result(result, args.output)


if __name__ == "__main__":
    main()
