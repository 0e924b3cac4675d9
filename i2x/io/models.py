"""Model specs: turn a string such as ``small-cnn`` or ``torchvision:resnet18`` into an nn.Module.

Supported specs:

* ``small-cnn``: the built-in demo network (:class:`SmallCNN`).
* ``small-segnet``: the built-in demo segmentation network (:class:`i2x.io.segnets.SmallSegNet`).
* ``torchvision:NAME``: a torchvision classification model built with ``weights=None`` (never
  downloads), its head resized to ``num_classes`` and its stem to ``in_channels``; or one of its
  segmentation models (:mod:`i2x.io.segnets`), returning per-pixel logits under ``"out"``.
* ``timm:NAME``: a timm model (``pip install 'i2x[timm]'``) built with ``pretrained=False`` (never
  downloads), ``num_classes`` and ``in_chans`` set; extra keyword arguments as ``timm:NAME?key=value&...``
  (e.g. ``timm:vit_tiny_patch16_224?img_size=32&patch_size=4&depth=2``).
* ``hf:PATH``: a Hugging Face image classifier (``pip install 'i2x[hf]'``) built from the ``config.json`` in
  ``PATH`` (a Trainer ``checkpoint-N/`` folder or the folder ``save_pretrained`` wrote) with
  ``AutoModelForImageClassification.from_config`` (never downloads, never runs code from the folder: a config
  whose ``auto_map`` names custom code is refused); its forward returns the logits.
* ``package.module:factory`` and ``path/to/file.py:factory``: a callable returning an nn.Module;
  it is called with ``num_classes=`` and ``in_channels=`` when it accepts them.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from i2x.errors import UserError
from i2x.io.devices import memory_size
from i2x.io.segnets import SmallSegNet, is_torchvision_segmentation, torchvision_segmentation
from i2x.io.specs import SpecRegistry, failure, import_file
from i2x.io.stems import conv_pool_stem, torchvision_model


class SmallCNN(nn.Module):
    """A four-conv network for small images: a 32x32 input gives an 8x8 grid at ``features``.

    ``features`` ends at the target layer (the last 4-D map); ``head`` pools and classifies.
    It is small on purpose: ten epochs on digits take seconds on two CPU cores.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *conv_pool_stem(in_channels, w),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _torchvision_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build ``torchvision.models.NAME`` without weights, adapted to the class and channel counts."""
    import torchvision.models as tvm

    available = tvm.list_models(module=tvm)  # classification models only (no detection/segmentation/video)
    if is_torchvision_segmentation(name):
        return torchvision_segmentation(name, num_classes, in_channels)
    if name not in available:
        available = available + tvm.list_models(module=tvm.segmentation)
        close = difflib.get_close_matches(name.lower(), available, n=6, cutoff=0.4)
        raise UserError(
            f"--model torchvision:{name}: torchvision has no classification model of that name"
            + (f"; similar: {', '.join(close)}" if close else "")
        )
    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if name.startswith("inception") or name.startswith("googlenet"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    return torchvision_model(name, in_channels, **kwargs)


def _timm_value(text: str) -> object:
    """A ``key=value`` value of a timm spec: an int, float, bool, tuple of ints (``2,2``) or a string."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text in ("true", "false", "True", "False"):
        return text.lower() == "true"
    if "," in text:
        return tuple(_timm_value(v) for v in text.split(","))
    return text


def _timm_model(target: str, num_classes: int, in_channels: int) -> nn.Module:
    """A timm model by name, never pretrained; ``NAME?k=v&k=v`` passes model arguments (sizes, depths)."""
    try:
        import timm
    except ImportError:
        raise UserError(f"--model timm:{target}: timm is not installed; pip install 'i2x[timm]' (or pip install timm)") from None
    name, _, query = target.partition("?")
    kwargs = {k: _timm_value(v) for k, _, v in (p.partition("=") for p in query.split("&") if p)}
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise UserError(f"--model timm:{name}: timm has no such model" + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise UserError(f"--model timm:{target}: timm could not build it ({exc})") from exc


def _logits(_module: nn.Module, _inputs: object, output: object) -> object:
    """Forward hook: a Hugging Face output object becomes its ``.logits`` tensor (what every stage expects)."""
    return getattr(output, "logits", output)


def _hf_model(target: str, num_classes: int, in_channels: int) -> nn.Module:
    """A Hugging Face image classifier from the ``config.json`` in folder ``target`` (no weights, no download).

    The model keeps its own parameter names (``vit.encoder.layer.0...``) so Trainer checkpoints and
    snapshots load as they are; a forward hook makes it return the logits rather than an output object.
    """
    try:
        from transformers import AutoConfig, AutoModelForImageClassification
    except ImportError:
        raise UserError(f"--model hf:{target}: transformers is not installed; pip install 'i2x[hf]' "
                        "(or pip install transformers)") from None
    folder = Path(target)
    if not (folder / "config.json").is_file():
        raise UserError(f"--model hf:{target}: no config.json in {folder}; point it at a Trainer checkpoint-N/ folder "
                        "or a folder written by save_pretrained")
    _refuse_custom_code(target, folder / "config.json")
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        _refuse_oversized(target, AutoModelForImageClassification, config)
        model = AutoModelForImageClassification.from_config(config, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"--model hf:{target}: transformers could not build a classifier from {folder / 'config.json'} "
                        f"({str(exc).splitlines()[0][:200]})") from exc
    labels = getattr(config, "num_labels", num_classes)
    channels = getattr(config, "num_channels", in_channels)
    if labels != num_classes or channels != in_channels:
        raise UserError(f"--model hf:{target}: its config.json has {labels} classes and {channels} input channels but "
                        f"the data has {num_classes} and {in_channels}; check --data, --num-classes and --channels")
    model.register_forward_hook(_logits)
    model.i2x_convert_state = lambda state: _hf_renamed(model, state)
    return model


def _refuse_oversized(target: str, auto: Any, config: Any) -> None:
    """Refuse a config whose weights would not fit in half the machine's memory (``hidden_size: 200000``), sized
    on the meta device before anything is allocated."""
    with torch.device("meta"):
        probe = auto.from_config(config, trust_remote_code=False)
    size = sum(p.numel() * p.element_size() for p in probe.parameters())
    limit = memory_size(torch.device("cpu"))
    if limit is not None and size > limit // 2:
        raise UserError(f"--model hf:{target}: its config.json describes {size / 2**30:.0f} GiB of weights, more than "
                        f"half this machine's {limit / 2**30:.0f} GiB; check its sizes (hidden_size, layers)")


def _refuse_custom_code(target: str, config_file: Path) -> None:
    """Refuse a config.json whose ``auto_map`` names Python code of its own: transformers would import it (after
    asking on stdin), and i2x never runs code that sits in a model folder."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--model hf:{target}: {config_file} is not readable JSON ({exc}); "
                        "point it at a folder written by save_pretrained") from None
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if auto_map:
        entry = (", ".join(f"{k} -> {v}" for k, v in auto_map.items()) if isinstance(auto_map, dict)
                 else str(auto_map))
        entry = " ".join(entry.split())  # one line, whatever the file holds
        raise UserError(f"--model hf:{target}: {config_file} asks for custom code (auto_map: {entry}); i2x never runs "
                        "code from a model folder: use a model type transformers ships, or build the model with "
                        "--model file.py:factory")


def _hf_renamed(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` in ``model``'s parameter names. transformers 5 writes some models' files (``save_pretrained``, so
    Trainer checkpoints) under their older names (``vit.encoder.layer.0.attention.attention.query``); only its own
    loader renames them, so the weights go through ``from_pretrained`` on a temporary folder. Returned unchanged
    (for the caller's key check to report) when they do not load completely."""
    import tempfile

    from safetensors.torch import save_file
    from transformers import AutoModelForImageClassification

    with tempfile.TemporaryDirectory(prefix="i2x-hf-") as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        loaded, info = AutoModelForImageClassification.from_pretrained(
            tmp, local_files_only=True, output_loading_info=True, trust_remote_code=False)
        if info.get("missing_keys") or info.get("unexpected_keys") or info.get("mismatched_keys"):
            return state
        return {k: v.detach().clone() for k, v in loaded.state_dict().items()}  # not mapped from the folder


def _load_factory(target: str) -> Callable[..., nn.Module]:
    """Resolve ``package.module:factory`` or ``path/to/file.py:factory`` to a callable."""
    module_part, _, attr = target.rpartition(":")
    if not module_part or not attr:
        raise UserError(f"--model {target}: expected 'package.module:factory' or 'file.py:factory'")
    if module_part.endswith(".py"):
        module = import_file(module_part, "--model", target, "i2x_user_")
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise UserError(f"--model {target}: cannot import {module_part} ({exc})") from exc
        except (Exception, SystemExit) as exc:  # the module's own code failed on import
            raise UserError(f"--model {target}: importing {module_part} failed: {failure(exc)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"--model {target}: {module_part} has no callable named {attr!r}")
    return factory


def _factory_model(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    """Call a ``package.module:factory`` or ``file.py:factory`` with the arguments it accepts."""
    factory = _load_factory(spec)
    params = inspect.signature(factory).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
              if accepts_any or k in params}
    try:
        model = factory(**kwargs)
    except UserError:
        raise
    except (Exception, SystemExit) as exc:  # the user's code: a raise, a recursion, sys.exit
        raise UserError(f"--model {spec}: the factory failed: {failure(exc)}; fix it or choose another --model") \
            from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch nn.Module")
    return model


#: The kinds of ``--model`` spec; a new kind is one builder ``(argument, num_classes, in_channels)`` and one entry.
MODEL_SPECS = SpecRegistry("--model", "model")
MODEL_SPECS.register("small-cnn", "the built-in demo CNN")(
    lambda _spec, num_classes, in_channels: SmallCNN(num_classes=num_classes, in_channels=in_channels))
MODEL_SPECS.register("torchvision:NAME", "a torchvision classification or segmentation model (fcn_resnet50, "
                     "deeplabv3_resnet50, lraspp_mobilenet_v3_large) with weights=None (never downloads)")(_torchvision_model)
MODEL_SPECS.register("timm:NAME", "a timm model with pretrained=False; timm:NAME?key=value sets model arguments")(
    _timm_model)
MODEL_SPECS.register("hf:PATH", "a Hugging Face image classifier built from PATH/config.json (never downloads)")(
    _hf_model)
MODEL_SPECS.register("small-segnet", "the built-in demo segmentation net (per-pixel logits)")(
    lambda _spec, num_classes, in_channels: SmallSegNet(num_classes=num_classes, in_channels=in_channels))
MODEL_SPECS.register("package.module:factory or path/to/file.py:factory", "a callable returning an nn.Module",
                     matches=lambda spec: ":" in spec)(_factory_model)


def build_model(spec: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build the model named by ``spec`` (:data:`MODEL_SPECS`) with fresh weights; checkpoints load afterwards."""
    kind, argument = MODEL_SPECS.resolve(spec)
    return kind.load(argument, num_classes, in_channels)
