"""Explain every torchvision classifier and a broad timm set with relprop; report what passes and why not.

For each model (built with random weights: ``weights=None`` / ``pretrained=False``, trained-like
normalisation statistics, ``eval()``) and each composite, ``relprop.explain(model, x, composite=...)`` must
return a finite tensor shaped like the input that is not all zero, and leave the model unchanged (every
state_dict tensor, every module's training flag, hook counts and requires_grad flags). Passing rows are timed:
the median of ``--reps`` explain calls after one warm-up against the median of a plain input gradient
(``torch.autograd.grad(logit, x)``), interleaved in one loop; the ratio is explain / gradient.

The torchvision suite is ``torchvision.models.list_models(module=torchvision.models)`` (every classifier
torchvision ships, read from torchvision); the timm suite is :data:`TIMM_MODELS`. Results are cached, one JSON
line per (suite, model, composite), under a key made of the relprop git commit and a hash of the files in
src/relprop: a rerun skips rows already measured for the same key (``--resume``, the default), so an
interrupted run loses nothing and a run after a code change measures again. ``--fresh`` ignores the cache.

    .venv/bin/python benchmarks/bench_architectures.py --threads 1                 # everything
    .venv/bin/python benchmarks/bench_architectures.py --suite timm --models 'vit*,deit*'
    .venv/bin/python benchmarks/bench_architectures.py --models resnet18 --composites zero --reps 1 --fresh
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import gc
import hashlib
import json
import re
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "outputs" / "bench_architectures" / "architectures.jsonl"
COMPOSITES = ["epsilon_plus_flat", "rlrp", "zero"]
SUITES = ["torchvision", "timm"]

#: the timm set: common classifiers of every family (names checked against timm 1.0.31's list_models)
TIMM_MODELS = [
    # convolutional
    "resnet50", "resnext50_32x4d", "seresnet50", "resnest14d", "res2net50_26w_4s", "densenet121", "dla34",
    "cspresnet50", "regnetx_002", "regnety_008", "repvgg_a0", "efficientnet_b0", "efficientnetv2_rw_t",
    "mobilenetv3_large_100", "mobilenetv4_conv_small", "ghostnet_100", "rexnet_100", "hrnet_w18_small",
    "inception_v3", "xception41", "convnext_tiny", "nfnet_l0",
    # transformers, hybrids and MLPs
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "cait_xxs24_224",
    "eva02_tiny_patch14_224", "swin_tiny_patch4_window7_224", "maxvit_tiny_tf_224", "coatnet_0_rw_224",
    "levit_128s", "pvt_v2_b0", "xcit_nano_12_p16_224", "tiny_vit_5m_224", "mobilevit_xs", "edgenext_xx_small",
    "poolformer_s12", "fastvit_t8", "mixer_b16_224", "resmlp_12_224",
]  # fmt: skip

#: torchvision models that need another input side than --size (tried after --size fails)
TORCHVISION_SIZES = {"inception_v3": 299}

ModelSpec = tuple[str, str, Callable[[], Any]]  # (suite, name, constructor)


# -- the cache key: which relprop is measured ------------------------------------------------------------------
def relprop_key(src: Path) -> str:
    """``<git commit>+<hash of the relprop package files>``: rows measured with other code are measured again.

    ``src`` is the folder of the imported relprop package: this checkout's src/relprop (commit: its HEAD),
    or a copy put first on PYTHONPATH, e.g. ``git archive HEAD src/relprop | tar -x -C DIR`` (commit: the
    first word of ``DIR/COMMIT`` if there is one, else "copy"). The hash covers the files themselves.
    """
    commit = "copy"
    if src == ROOT / "src" / "relprop":
        try:
            commit = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "nogit"
    elif (src.parents[1] / "COMMIT").is_file():
        commit = ((src.parents[1] / "COMMIT").read_text().split() or ["copy"])[0][:12]
    digest = hashlib.sha256()
    for path in sorted(src.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{commit}+{digest.hexdigest()[:12]}"


# -- model lists -----------------------------------------------------------------------------------------------
def torchvision_specs() -> list[ModelSpec]:
    import torchvision

    def ctor(name: str) -> Callable[[], Any]:
        return lambda: torchvision.models.get_model(name, weights=None)

    return [("torchvision", n, ctor(n)) for n in torchvision.models.list_models(module=torchvision.models)]


def timm_specs() -> list[ModelSpec]:
    import timm

    available = set(timm.list_models())
    missing = [n for n in TIMM_MODELS if n not in available]
    if missing:
        raise SystemExit(f"timm {timm.__version__} has no model(s) {missing}; update TIMM_MODELS")

    def ctor(name: str) -> Callable[[], Any]:
        return lambda: timm.create_model(name, pretrained=False)

    return [("timm", n, ctor(n)) for n in TIMM_MODELS]


def select(specs: list[ModelSpec], patterns: Sequence[str]) -> list[ModelSpec]:
    if not patterns:
        return specs
    return [s for s in specs if any(fnmatch.fnmatchcase(s[1], p) for p in patterns)]


# -- model preparation and checks ------------------------------------------------------------------------------
def trained_like(model: Any, seed: int = 1) -> None:
    """Random trained-like normalisation statistics and affine parameters, and random weights where the
    initialisation is all zero (fixed seed)."""
    import torch
    import torch.nn as nn

    g = torch.Generator().manual_seed(seed)

    def fill(t: Any, kind: str, a: float, b: float) -> None:
        if t is None:
            return
        with torch.no_grad():
            if kind == "normal":
                t.copy_(torch.randn(t.shape, generator=g) * b + a)
            else:
                t.copy_(torch.rand(t.shape, generator=g) * (b - a) + a)

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is not None:
                fill(m.running_mean, "normal", 0.0, 0.5)
            if m.running_var is not None:
                fill(m.running_var, "uniform", 0.5, 2.0)
            fill(m.weight, "uniform", 0.5, 1.5)
            fill(m.bias, "normal", 0.0, 0.3)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            fill(getattr(m, "weight", None), "uniform", 0.5, 1.5)
            fill(getattr(m, "bias", None), "normal", 0.0, 0.1)
    # weights initialised to zero (torchvision's and timm's ViT heads): logits 0 would make every relevance 0
    for p in model.parameters():
        if p.dim() >= 2 and not bool(p.detach().any()):
            fill(p, "normal", 0.0, 0.02)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def snapshot(model: Any) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "modules": snapshot_modules(model),
        "requires_grad": [(k, p.requires_grad) for k, p in model.named_parameters()],
    }


def changes(model: Any, snap: dict[str, Any]) -> str | None:
    """A description of how the model differs from ``snap``; None if it does not."""
    import torch

    state = model.state_dict(keep_vars=True)
    if list(state) != list(snap["state"]):
        return f"state_dict keys changed ({len(snap['state'])} -> {len(state)})"
    for k, v in state.items():
        ref = snap["state"][k]
        if v.shape != ref.shape or v.dtype != ref.dtype or not torch.equal(v.detach(), ref):
            return f"state_dict tensor '{k}' changed"
    now = snapshot_modules(model)
    if now != snap["modules"]:
        bad = next((a, b) for a, b in zip(snap["modules"], now) if a != b) if len(now) == len(snap["modules"]) else None
        if bad is None:
            return "the set of submodules changed"
        return f"module '{bad[0][0]}' changed (training, {', '.join(_HOOK_DICTS)}): {bad[0][1:]} -> {bad[1][1:]}"
    if [(k, p.requires_grad) for k, p in model.named_parameters()] != snap["requires_grad"]:
        return "a parameter's requires_grad flag changed"
    return None


def snapshot_modules(model: Any) -> list[tuple[Any, ...]]:
    return [(name, m.training, *(len(getattr(m, d, {})) for d in _HOOK_DICTS)) for name, m in model.named_modules()]


class CheckFailed(Exception):
    """The explanation came back but is unusable, or the model was changed."""


class ModelTimeout(Exception):
    """A (model, composite) ran past --timeout."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`ModelTimeout` in the main thread after ``seconds`` (0: no limit)."""
    if seconds <= 0:
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise ModelTimeout(f"ran past --timeout {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_relevance(rel: Any, x: Any) -> None:
    import torch

    if not isinstance(rel, torch.Tensor):
        raise CheckFailed(f"explain returned {type(rel).__name__}, not a tensor")
    if rel.shape != x.shape:
        raise CheckFailed(f"relevance has shape {tuple(rel.shape)}, the input {tuple(x.shape)}")
    finite = torch.isfinite(rel)
    if not bool(finite.all()):
        raise CheckFailed(f"relevance is not finite ({int((~finite).sum())} of {rel.numel()} entries NaN/Inf)")
    if not bool((rel != 0).any()):
        raise CheckFailed("relevance is all zero")


def error_fields(exc: BaseException) -> dict[str, str]:
    """Type and message of a failure; for errors that are not relprop's own (whose messages say why), also
    ``where``: the innermost frame inside relprop, else the innermost frame, as ``file:line in function``."""
    import traceback

    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    out = {"error_type": type(exc).__name__, "error": f"{type(exc).__name__}: {text[:300]}", "error_line": first[:600]}
    if type(exc).__module__.split(".")[0] != "relprop" and not isinstance(exc, (CheckFailed, ModelTimeout)):
        frames = traceback.extract_tb(exc.__traceback__)
        inside = [f for f in frames if "relprop" in Path(f.filename).parts]
        if frames:
            f = (inside or frames)[-1]
            parts = Path(f.filename).parts
            short = "/".join(parts[parts.index("relprop") :]) if "relprop" in parts else Path(f.filename).name
            out["where"] = f"{short}:{f.lineno} in {f.name}"
    return out


def input_sizes(suite: str, name: str, model: Any, size: int) -> list[int]:
    """Input sides to try, in order: the model's own required size first for timm, --size first otherwise."""
    own: list[int] = []
    if suite == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        if cfg.get("input_size"):
            own.append(int(cfg["input_size"][-1]))
        tried = [*own, size]
    else:
        if name in TORCHVISION_SIZES:
            own.append(TORCHVISION_SIZES[name])
        tried = [size, *own, 224]
    return list(dict.fromkeys(tried))


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_model(
    spec: ModelSpec, composites: Sequence[str], args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]
) -> None:
    """Build, prepare and explain one model with each composite; ``emit`` gets one row per composite."""
    import torch

    import relprop

    suite, name, ctor = spec
    base = {"suite": suite, "model": name, "batch": args.batch, "threads": args.threads, "reps": args.reps}

    def emit_all(extra: dict[str, Any], which: Sequence[str] = composites) -> None:
        for c in which:
            emit({**base, "composite": c, **extra})

    t_build = time.perf_counter()
    try:
        with deadline(args.timeout), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            model = ctor()
            n_params = sum(p.numel() for p in model.parameters()) / 1e6
            base["params_m"] = round(n_params, 3)
            if args.max_params and n_params > args.max_params:
                emit_all({"status": "skipped", "error": f"skipped (params): {n_params:.1f} M > --max-params"})
                return
            trained_like(model)
            model.eval()
            x = logits = None
            errors = []
            for s in input_sizes(suite, name, model, args.size):
                x = torch.rand(args.batch, 3, s, s, generator=torch.Generator().manual_seed(2))
                try:
                    with torch.no_grad():
                        logits = model(x)
                    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                        raise CheckFailed(f"the model returns {type(logits).__name__}, not logits (B, C)")
                    base["size"] = s
                    break
                except Exception as exc:  # noqa: BLE001 - try the next size
                    errors.append(f"{s}: {type(exc).__name__}: {exc}")
                    logits = None
            if logits is None:
                raise CheckFailed("the plain forward fails at every size tried; " + " | ".join(errors))
            target = logits.argmax(1)
            snap = snapshot(model)
    except Exception as exc:  # noqa: BLE001 - recorded
        status = "timeout" if isinstance(exc, ModelTimeout) else "fail"
        emit_all({"status": status, "stage": "build", **error_fields(exc)})
        return
    base["build_s"] = round(time.perf_counter() - t_build, 2)

    def gradient() -> None:
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xi)

    for c in composites:
        t0 = time.perf_counter()
        row: dict[str, Any] = {**base, "composite": c}
        stage = "explain"
        try:
            with deadline(args.timeout), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rel = relprop.explain(model, x, "predicted", c)  # warm-up, traces the model
                stage = "check"
                check_relevance(rel, x)
                problem = changes(model, snap)
                if problem:
                    raise CheckFailed(f"explain changed the model: {problem}")
                del rel
                shown = list(dict.fromkeys(f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught))
                if shown:
                    row["warnings"] = shown[:3]
                stage = "timing"
                gradient()  # warm-up
                t_exp, t_grad = [], []
                for _ in range(args.reps):
                    t_grad.append(_seconds(gradient))
                    t_exp.append(_seconds(functools.partial(relprop.explain, model, x, "predicted", c)))
                stage = "check"
                problem = changes(model, snap)
                if problem:
                    raise CheckFailed(f"the model changed while timing: {problem}")
            te, tg = statistics.median(t_exp), statistics.median(t_grad)
            row.update(status="ok", explain_s=round(te, 5), gradient_s=round(tg, 5), ratio=round(te / tg, 3))
        except Exception as exc:  # noqa: BLE001 - recorded
            row.update(status="timeout" if isinstance(exc, ModelTimeout) else "fail", stage=stage, **error_fields(exc))
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        emit(row)
        gc.collect()
    # the model, its snapshot and the input are freed when this returns (main collects after each model)


# -- cache -----------------------------------------------------------------------------------------------------
def load_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


# -- report ----------------------------------------------------------------------------------------------------
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s/:'\"`]+)+/([^\s/:'\"`]+\.py)")


def normalise(message: str) -> str:
    """The first sentence of a failure message, without module paths, node numbers, shapes and file folders."""
    text = message.strip().splitlines()[0] if message.strip() else ""
    text = _PATH.sub(r"\1", text)
    m = re.search(r"[.;](\s|$)", text)
    first = text[: m.start()] if m else text
    first = re.sub(r"could not trace \w+", "could not trace <model>", first)
    first = re.sub(r" \(at File \"[^\"]*\", line \d+, in [^:]*: `[^`]*`\)", "", first)  # where a call is
    first = re.sub(r"(\w+\.py):\d+ in (\w+): `[^`]*`", r"\1 in \2", first)  # where tracing broke
    first = re.sub(r"module '[^']*'", "module '…'", first)
    first = re.sub(r"'[A-Za-z_][\w]*(?:\.[\w]+)+'", "'…'", first)
    first = re.sub(r"`([A-Za-z_][A-Za-z_]*?)_\d+`", r"`\1`", first)
    first = re.sub(r"\((?:\d+, )+\d+\)|\[(?:\d+, )+\d+\]|torch\.Size\([^)]*\)", "(…)", first)
    return first


def cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if row["status"] == "ok":
        return f"ok {row['ratio']:.2f}x"
    if row["status"] == "skipped":
        return "skipped (params)"
    if row["status"] == "timeout":
        return "TIMEOUT"
    return f"FAIL {row.get('error_type', '?')}"


def summarise(
    rows: dict[tuple[str, str, str], dict[str, Any]], specs: list[ModelSpec], composites: Sequence[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for suite in dict.fromkeys(s[0] for s in specs):
        names = [s[1] for s in specs if s[0] == suite]
        per_model = {n: {c: rows.get((suite, n, c)) for c in composites} for n in names}
        counts = {
            c: {
                "ok": sum(1 for n in names if (per_model[n][c] or {}).get("status") == "ok"),
                "of": len(names),
                "fail": sum(1 for n in names if (per_model[n][c] or {}).get("status") == "fail"),
                "timeout": sum(1 for n in names if (per_model[n][c] or {}).get("status") == "timeout"),
                "skipped": sum(1 for n in names if (per_model[n][c] or {}).get("status") == "skipped"),
                "not_run": sum(1 for n in names if per_model[n][c] is None),
            }
            for c in composites
        }
        groups: dict[str, dict[str, Any]] = {}
        for n in names:
            for c in composites:
                r = per_model[n][c]
                if r is None or r["status"] not in ("fail", "timeout"):
                    continue
                key = f"{r.get('error_type', '?')}: {normalise(r.get('error_line') or r.get('error', ''))}"
                g = groups.setdefault(
                    key, {"count": 0, "models": {}, "example": r.get("error", ""), "where": r.get("where")}
                )
                g["count"] += 1
                g["models"].setdefault(n, []).append(c)
        blockers = [
            {"message": k, "count": g["count"], "models": g["models"], "example": g["example"], "where": g["where"]}
            for k, g in sorted(groups.items(), key=lambda kv: (-len(kv[1]["models"]), -kv[1]["count"], kv[0]))
        ]
        out[suite] = {
            "models": {
                n: {
                    "params_m": next((r.get("params_m") for r in per_model[n].values() if r), None),
                    "size": next((r.get("size") for r in per_model[n].values() if r and r.get("size")), None),
                    **{
                        c: (
                            None
                            if r is None
                            else {k: r.get(k) for k in ("status", "ratio", "error_type", "error") if r.get(k)}
                        )
                        for c, r in per_model[n].items()
                    },
                }
                for n in names
            },
            "counts": counts,
            "blockers": blockers,
        }
    return out


def print_report(summary: dict[str, Any], composites: Sequence[str], rows: dict[tuple[str, str, str], Any]) -> None:
    for suite, s in summary.items():
        names = list(s["models"])
        w = max([5, *(len(n) for n in names)])
        cw = max(28, *(len(c) for c in composites))
        print(f"\n== {suite}: {len(names)} models ==")
        print(f"{'model':<{w}}  {'params(M)':>9}  {'size':>4}  " + "  ".join(f"{c:<{cw}}" for c in composites))
        for n in names:
            m = s["models"][n]
            params = f"{m['params_m']:.1f}" if m["params_m"] is not None else "-"
            size = str(m["size"]) if m["size"] else "-"
            cells = "  ".join(f"{cell(rows.get((suite, n, c))):<{cw}}" for c in composites)
            print(f"{n:<{w}}  {params:>9}  {size:>4}  {cells}")
        print()
        for c in composites:
            k = s["counts"][c]
            extra = ", ".join(
                f"{k[f]} {f.replace('_', ' ')}" for f in ("fail", "timeout", "skipped", "not_run") if k[f]
            )
            print(f"{suite} {c}: {k['ok']} of {k['of']} ok" + (f" ({extra})" if extra else ""))
        print(f"\n-- {suite} blockers: failures grouped by normalised message, most models first --")
        if not s["blockers"]:
            print("(none)")
        for b in s["blockers"]:
            models = ", ".join(
                n + ("" if len(cs) == len(composites) else f" [{'/'.join(cs)}]") for n, cs in b["models"].items()
            )
            print(f"{len(b['models']):>4} models, {b['count']:>3} rows  {b['message']}")
            print(f"      models: {models}")
            print(f"      example: {b['example'][:300]}" + (f" (at {b['where']})" if b.get("where") else ""))


# -- main ------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=["torchvision", "timm", "all"], default="all")
    p.add_argument("--models", default="", help="fnmatch pattern(s), comma-separated (default: every model)")
    p.add_argument("--composites", default=",".join(COMPOSITES))
    p.add_argument("--size", type=int, default=224, help="input side (models with their own size use it)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--reps", type=int, default=3, help="timed explain/gradient pairs after one warm-up")
    p.add_argument("--max-params", type=float, default=0.0, help="skip models above this many million parameters")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per (model, composite), 0: none")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSONL results cache")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True, help="skip measured rows")
    p.add_argument("--fresh", action="store_true", help="ignore the cache (measure every row again)")
    p.add_argument("--key", default=None, help="cache key to use instead of the computed one")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, models: Sequence[ModelSpec] | None = None) -> dict[str, Any]:
    """Run the benchmark; ``models`` (for tests) replaces the suites by (suite, name, constructor) triples."""
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    composites = [c.strip() for c in args.composites.split(",") if c.strip()]
    patterns = [p.strip() for p in args.models.split(",") if p.strip()]
    if models is not None:
        specs = select(list(models), patterns)
    else:
        specs = []
        if args.suite in ("torchvision", "all"):
            specs += torchvision_specs()
        if args.suite in ("timm", "all"):
            specs += timm_specs()
        specs = select(specs, patterns)
    import relprop

    relprop_dir = Path(relprop.__file__).resolve().parent
    key = args.key or relprop_key(relprop_dir)

    cached: dict[tuple[str, str, str], dict[str, Any]] = {}
    if args.resume and not args.fresh:
        for r in load_rows(args.out):
            if r.get("key") == key and r.get("status") != "skipped":
                cached[(r["suite"], r["model"], r["composite"])] = r
    args.out.parent.mkdir(parents=True, exist_ok=True)

    import torchvision

    import relprop

    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    with contextlib.suppress(ImportError):
        import timm

        versions += f", timm {timm.__version__}"
    header = [
        f"# bench_architectures: relprop {relprop.__version__} from {relprop_dir}, key {key}; {versions}",
        f"# threads {torch.get_num_threads()}, batch {args.batch}, size {args.size} (or the model's own), "
        f"reps {args.reps} after a warm-up, timeout {args.timeout:g} s, max params "
        f"{args.max_params:g} M" + (" (no limit)" if not args.max_params else ""),
        f"# composites: {', '.join(composites)}; cache {args.out} ({len(cached)} rows reused)",
    ]
    for suite in dict.fromkeys(s[0] for s in specs):
        names = [s[1] for s in specs if s[0] == suite]
        header.append(f"# {suite} ({len(names)}): {', '.join(names)}")
    print("\n".join(header), file=sys.stdout if not args.json else sys.stderr, flush=True)

    results = dict(cached)
    new = 0
    t_start = time.perf_counter()
    with args.out.open("a") as f, tqdm(specs, file=sys.stderr, desc="models", dynamic_ncols=False) as bar:

        def emit(row: dict[str, Any]) -> None:
            nonlocal new
            new += 1
            row = {**row, "key": key, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            f.write(json.dumps(row) + "\n")
            f.flush()
            results[(row["suite"], row["model"], row["composite"])] = row
            tqdm.write(f"{row['suite']} {row['model']} {row['composite']}: {cell(row)}", file=sys.stderr)

        for spec in bar:
            todo = [c for c in composites if (spec[0], spec[1], c) not in cached]
            bar.set_postfix_str(f"{spec[1]}" + ("" if todo else " (cached)"))
            if todo:
                measure_model(spec, todo, args, emit)
                gc.collect()
    elapsed = time.perf_counter() - t_start

    summary = {
        "run": {"key": key, "threads": torch.get_num_threads(), "seconds": round(elapsed, 1), "rows_new": new},
        "suites": summarise(results, specs, composites),
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print_report(summary["suites"], composites, results)
        print(f"\n# measured in {elapsed:.0f} s ({new} rows new, {len(cached)} from the cache)")
    return summary


if __name__ == "__main__":
    main()
