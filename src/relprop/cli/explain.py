"""``relprop explain INPUT --model SPEC``: relevance heatmap PNGs for an image file or every image in a folder
(the streaming, manifest and resume are :mod:`relprop.batch`'s; images are read by :mod:`relprop.data.images`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..composites import PRESETS
    from ..data.images import IMAGE_EXTENSIONS
    from ._common import wrap

    ex = subparsers.add_parser(
        "explain",
        help="write a relevance heatmap PNG for an image or every image in a folder",
        description=wrap(
            "Explain one image file or every image under a folder (recursively; "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}). Each image is read at its full bit depth (8 or 16 bits, "
            "grey or colour), resized (shorter side to --size) and centre-cropped to a square, explained, and "
            "written as OUT/<name>_heatmap.png (sub-folders are mirrored). Red is positive relevance (evidence "
            "for the target class), blue negative. Images stream through in batches; each batch's files are "
            "written as soon as it is done and recorded in OUT/manifest.jsonl (one JSON line per image: image, "
            "status, heatmap, raw, predicted, target, relevance_sum, source size and mtime), the options in "
            "OUT/explain.json. Running the same command again resumes: images whose outputs are recorded and "
            "present are skipped, and unreadable images are not retried until the file changes. Other options "
            "on the same OUT are an error (--overwrite redoes everything). Ctrl-C or SIGTERM finishes the "
            "current batch's writes and exits with status 130. --devices N runs N processes (one per GPU with "
            "--accelerator gpu, or N CPU processes) through Lightning's predict loop (strategy ddp; needs pip "
            "install 'relprop[train]'): the batches are dealt out whole, each image is explained once, and the "
            "files are the same as one process writes; each process appends to its own "
            "OUT/manifest-rank<r>.jsonl, folded into OUT/manifest.jsonl at the end. A run stopped with any "
            "number of processes resumes with any other."
        ),
        epilog=(
            "Examples:\n"
            "  relprop explain photos/ --model resnet50 --weights resnet50.pth --out heatmaps\n"
            "  relprop explain digit.png --model lenet5 --target 3\n"
            "  relprop explain cat.jpg --model my_model.pt --composite epsilon_gamma_box --overlay\n"
            "  relprop explain photos/ --model resnet50 --weights resnet50.pth --accelerator gpu --devices 4\n"
            "  relprop explain photos/ --model my_model.pt --devices 2          # 2 CPU processes\n"
            "  (on several machines: the same command on each, with --num-nodes M and MASTER_ADDR,\n"
            "  MASTER_PORT, NODE_RANK set, or under SLURM's srun; OUT on a shared file system)\n\n"
            "Security: a full model file is unpickled (torch.load with weights_only=False) and can run "
            "code;\nonly load files you trust. A state_dict given with --weights is loaded safely.\n\n"
            "Exit status: 0 success; 2 usage error or bad input (unreadable images in a folder are reported\n"
            "one by one, the readable ones are still explained); 130 interrupted (run it again to resume)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("input", type=Path, metavar="INPUT", help="an image file or a folder of images")
    ex.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="a torchvision architecture name (resnet18, vgg16, ...), timm:NAME for a timm architecture "
        "(timm:resnet18, timm:resnet18.a1_in1k; needs pip install 'relprop[timm]'), 'lenet5' / 'lenet5-adv' "
        "(advertorch's pretrained MNIST LeNet-5), or the path of a full model saved with torch.save(model, path). "
        "Architectures are built without weights and nothing is downloaded (hf-hub: specs and URLs are refused): "
        "give the weights with --weights",
    )
    ex.add_argument(
        "--weights",
        metavar="FILE",
        help="local weights file for an architecture name: a state_dict saved with torch.save (.pt/.pth/.bin), a "
        ".safetensors file, or a checkpoint dict holding the state_dict (under 'state_dict', 'model', ...); read "
        "without unpickling code",
    )
    ex.add_argument("--num-classes", type=int, metavar="K", help="number of outputs of an architecture name")
    ex.add_argument(
        "--target",
        default="predicted",
        metavar="predicted|INT",
        help="class to explain: 'predicted' (the arg-max logit, default) or a class index",
    )
    ex.add_argument(
        "--composite",
        default="epsilon_plus_flat",
        choices=sorted(PRESETS),
        metavar="NAME",
        help=f"LRP rule preset (default epsilon_plus_flat); one of: {', '.join(sorted(PRESETS))}",
    )
    ex.add_argument(
        "--size", type=int, metavar="N", help="image side length fed to the model (default 224; 28 for lenet5)"
    )
    ex.add_argument(
        "--normalize",
        choices=("imagenet", "none"),
        help="input normalisation: 'imagenet' (mean/std of ImageNet) or 'none' (pixels in [0, 1]); default "
        "imagenet for 3-channel models, none for 1-channel models. epsilon_gamma_box's input bounds follow it",
    )
    ex.add_argument(
        "--out", type=Path, default=Path("heatmaps"), metavar="DIR", help="output folder (default ./heatmaps)"
    )
    ex.add_argument("--overlay", action="store_true", help="blend the heatmap over the (greyscale) input image")
    ex.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="B",
        help="images per forward/backward pass (default 8); resume with the same B for bit-identical results",
    )
    ex.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="processes that load and resize images while the model runs (default 0: the main process)",
    )
    ex.add_argument(
        "--save-raw",
        action="store_true",
        help="also write the raw relevance as OUT/<name>_relevance.npy (float32, shape C×H×W)",
    )
    ex.add_argument("--overwrite", action="store_true", help="explain every image again, discarding what OUT recorded")
    ex.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="processes per machine (default 1): N GPUs with --accelerator gpu, N CPU processes with --accelerator "
        "cpu; more than 1 runs Lightning's predict loop with strategy ddp (pip install 'relprop[train]')",
    )
    ex.add_argument(
        "--accelerator",
        choices=("cpu", "gpu", "auto"),
        default="cpu",
        help="where the model runs (default cpu); gpu: one CUDA GPU per process; auto: gpu if one is visible",
    )
    ex.add_argument(
        "--num-nodes",
        type=int,
        default=1,
        metavar="M",
        help="machines (default 1), each running the same command with --devices N processes (Lightning's "
        "cluster environments: SLURM, or MASTER_ADDR/MASTER_PORT/NODE_RANK set by hand); OUT must be shared",
    )
    ex.set_defaults(run=run)


def _input_channels(model: nn.Module) -> int | None:
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
    return None


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Explain the image or folder ``args.input``; print one summary line."""
    import os
    import time

    import torch

    from .. import composites
    from ..batch import Job, explain_images, heatmap_paths, options_fingerprint
    from ..data.images import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, find_images
    from ..errors import DataError, DataProblem, UsageError
    from ..explainer import Explainer
    from ..models import LeNet5, load_model
    from ._common import warn

    start = time.perf_counter()
    src: Path = args.input
    if not src.exists():
        raise UsageError(f"input not found: {src}")
    out: Path = args.out
    if src.is_dir():
        images = find_images(src, exclude=[out])  # earlier heatmaps in an output folder inside INPUT
        if not images:
            raise UsageError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {src}")
        root: Path | None = src
    else:
        images, root = [src], None
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.workers < 0:
        raise UsageError(f"--workers {args.workers}: must be at least 0")
    if args.devices < 1:
        raise UsageError(
            f"--devices {args.devices}: must be at least 1 (processes per machine: GPUs with --accelerator gpu, "
            "CPU processes with --accelerator cpu)"
        )
    if args.num_nodes < 1:
        raise UsageError(f"--num-nodes {args.num_nodes}: must be at least 1 (the number of machines)")
    target: int | str = args.target
    if args.target != "predicted":
        try:
            target = int(args.target)
        except ValueError:
            raise UsageError(f"--target {args.target!r}: use 'predicted' or a class index") from None

    model = load_model(args.model, args.weights, args.num_classes)
    random = args.weights is None and not Path(args.model).is_file() and not isinstance(model, LeNet5)
    if random and os.environ.get("LOCAL_RANK", "0") == "0":  # Lightning's further processes (--devices N) stay quiet
        warn(
            f"{args.model} has random weights (no --weights file given; nothing is downloaded), so its heatmaps "
            "show no learned evidence"
        )
    channels = _input_channels(model) or 3
    if channels not in (1, 3):
        raise UsageError(f"the model's first convolution takes {channels} channels; images give 1 or 3")
    size = args.size if args.size is not None else (28 if isinstance(model, LeNet5) else 224)
    if size < 1:
        raise UsageError(f"--size {size}: must be positive")
    norm = args.normalize or ("imagenet" if channels == 3 else "none")
    if norm == "imagenet" and channels != 3:
        raise UsageError("--normalize imagenet needs a 3-channel (RGB) model; this model takes 1 channel")
    if norm == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    else:
        mean, std = torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
    if args.composite == "epsilon_gamma_box":
        # z^B needs the bounds of the *model's* input: pixels 0 and 1 after normalisation
        composite = composites.epsilon_gamma_box(low=(0.0 - mean) / std, high=(1.0 - mean) / std)
    else:
        composite = composites.resolve(args.composite)
    fingerprint = options_fingerprint(
        model=args.model, weights=args.weights, num_classes=args.num_classes, composite=args.composite,
        target=target, size=size, normalize=norm, overlay=args.overlay, save_raw=args.save_raw,
    )  # fmt: skip
    job = Job(
        images=images,
        outputs=heatmap_paths(images, root, out),
        out=out,
        explainer=Explainer(model, composite),
        mean=mean,
        std=std,
        size=size,
        channels=channels,
        target=target,
        fingerprint=fingerprint,
        overlay=args.overlay,
        save_raw=args.save_raw,
        batch_size=args.batch_size,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=root is not None,
        raise_unreadable=root is None,  # a single file: its error is the command's error
        on_unreadable=lambda path, message: warn(f"{message} (not explained)"),
        devices=args.devices,
        accelerator=args.accelerator,
        num_nodes=args.num_nodes,
    )
    done = explain_images(job)
    if done.rank != 0:
        return 0  # another process of a run with several: rank 0 reports (a non-zero status would end it)
    if done.interrupted:
        raise KeyboardInterrupt(
            f"{done.interrupted} received; {done.done} of {done.total} images done; run the same command again "
            "to resume"
        )
    n, bad = done.written, len(done.unreadable) + done.unreadable_before
    summary = (
        f"wrote {_plural(n, 'heatmap')}{' and .npy relevance' if args.save_raw else ''} to {out} "
        f"({args.model}, {args.composite}, target {target}, {size}×{size}, normalize {norm}) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    if done.skipped:
        summary += f"; {done.skipped} done before (skipped)"
    if bad:
        summary += f"; {_plural(bad, 'unreadable file')}"
    print(summary)
    if not bad:
        return 0
    parts = []
    if done.unreadable:
        shown = ", ".join(str(p) for p in done.unreadable[:3]) + (", …" if len(done.unreadable) > 3 else "")
        parts.append(f"{_plural(len(done.unreadable), 'unreadable image file')}: {shown}")
    if done.unreadable_before:
        parts.append(f"{_plural(done.unreadable_before, 'unreadable file')} recorded by an earlier run skipped")
    problems = [DataProblem(p, "unreadable image", "unreadable") for p in done.unreadable]
    raise DataError(
        "; ".join(parts) + f" (listed in {out / 'manifest.jsonl'}; retried once changed or with --overwrite)",
        problems,
    )
