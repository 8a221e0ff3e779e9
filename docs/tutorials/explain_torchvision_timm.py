"""Explain a torchvision model and timm models, with relprop.explain, an Explainer and its summary().

Nothing is downloaded: the torchvision and timm architectures are built without weights (random
initialisation), so their heatmaps show how relevance flows through an untrained network, not what a trained
one looks at. The pretrained LeNet-5 (weights shipped inside the advertorch package) shows a trained model.

Writes to --out:
  explain_models.png          rows: photos; columns: torchvision resnet18, timm resnet10t, timm ViT (attnlrp)
  explain_per_class.png       one digit, the relevance for each of the 10 classes (one forward, 10 passes)
  explain_summary.txt         Explainer.summary() of timm:resnet10t
  explain_weights.txt         a weights file saved and loaded again with load_model(..., weights=FILE)

Run: python docs/tutorials/explain_torchvision_timm.py --out outputs/tutorials [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data as skdata

import relprop
from relprop.models import load_mnist_digits, load_model
from relprop.viz.heatmap import save_grid

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def photos(names: list[str], size: int) -> torch.Tensor:
    """scikit-image's bundled photos as a batch (B, 3, size, size) in [0, 1]: centre square, resized."""
    out = []
    for name in names:
        a = np.asarray(getattr(skdata, name)(), dtype=np.float32) / 255.0
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]
        out.append(F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out).clamp(0, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/tutorials"), help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="2 photos at 128 px (224 px for the ViT)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    torch.manual_seed(0)
    names = ["chelsea", "coffee"] if args.quick else ["chelsea", "coffee", "astronaut", "rocket"]
    size = 128 if args.quick else 224
    pixels = photos(names, size)
    x = ((pixels - IMAGENET_MEAN) / IMAGENET_STD).to(device)  # the normalisation ImageNet models expect

    # --8<-- [start:torchvision]
    # A torchvision architecture by name, built with weights=None (the same as torchvision.models.resnet18()).
    resnet = load_model("resnet18").to(device)
    relevance = relprop.explain(resnet, x, target="predicted", composite="epsilon_plus_flat")
    # --8<-- [end:torchvision]
    columns = {"torchvision resnet18\nepsilon_plus_flat": list(relevance.cpu())}

    # --8<-- [start:timm]
    # A timm architecture: "timm:NAME" (timm.create_model(NAME, pretrained=False)).
    resnet10t = load_model("timm:resnet10t").to(device)
    explainer = relprop.Explainer(resnet10t, "epsilon_plus_flat")  # traced once, reused for every call
    columns["timm resnet10t\nepsilon_plus_flat"] = list(explainer(x, target="predicted").cpu())
    # --8<-- [end:timm]
    (args.out / "explain_summary.txt").write_text(explainer.summary() + "\n")

    # --8<-- [start:vit]
    vit = load_model("timm:vit_tiny_patch16_224").to(device)
    torch.nn.init.normal_(vit.head.weight, std=0.02)  # timm initialises a ViT's head to zero: all logits 0
    x224 = ((photos(names, 224) - IMAGENET_MEAN) / IMAGENET_STD).to(device)
    vit_relevance = relprop.explain(vit, x224, target="predicted", composite="attnlrp")
    # --8<-- [end:vit]
    vit_maps = F.interpolate(vit_relevance.sum(1, keepdim=True), size=(size, size), mode="area")
    columns["timm ViT-Tiny\nattnlrp"] = list(vit_maps.cpu())
    path = save_grid(
        args.out / "explain_models.png", list(pixels), columns, cell_size=1.9,
        title="random weights (nothing is downloaded): relevance flow, not what a trained model sees",
    )  # fmt: skip
    print(f"wrote {path}")

    # --8<-- [start:weights]
    # Real weights come from a local file: a state_dict (torch.save) or .safetensors, or a checkpoint dict.
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "resnet18.pt"
        torch.save(resnet.state_dict(), weights)  # stands in for a file you downloaded or trained
        again = load_model("resnet18", weights=weights).to(device)
        same = torch.equal(relprop.explain(again, x, "predicted", "epsilon_plus_flat"), relevance)
    # --8<-- [end:weights]
    text = f"load_model('resnet18', weights=FILE) gives the same relevance as the model saved: {same}"
    (args.out / "explain_weights.txt").write_text(text + "\n")
    print(text)
    if not same:
        raise RuntimeError("the model loaded from its weights file explains differently")

    # --8<-- [start:per_class]
    # A trained model: one forward pass, then one relevance pass per class ("why 8 and not 3?").
    lenet = load_model("lenet5").to(device)
    digits, labels = load_mnist_digits(n_per_class=1)
    digit = digits[8:9].to(device)  # an 8
    fp = relprop.Explainer(lenet, "epsilon_gamma_box").forward(digit)
    logits = fp.logits[0]
    per_class = {f"class {c}\nlogit {float(logits[c]):.1f}": list(fp.explain(c).relevance.cpu()) for c in range(10)}
    # --8<-- [end:per_class]
    path = save_grid(
        args.out / "explain_per_class.png", list(digit.cpu()), per_class, cell_size=1.3,
        title="LeNet-5 (pretrained) on an 8: relevance per class (each map scaled to its max); red: for, blue: against",
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
