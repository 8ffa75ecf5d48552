"""Models of the fine-tuning benchmarks and the "last k layers trainable" setting."""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("smallcnn", "resnet18", "resnet34", "mobilenet_v2", "vit_tiny")
#: torchvision ``VisionTransformer`` arguments of ``vit_tiny`` (``image_size`` and ``num_classes`` come from the run).
VIT_TINY = {"patch_size": 4, "num_layers": 6, "num_heads": 4, "hidden_dim": 128, "mlp_dim": 256, "dropout": 0.0,
            "attention_dropout": 0.0}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


class SmallCNN(nn.Module):
    """Five 3x3 conv-BN-ReLU blocks (two of stride 2), global average pooling and a linear classifier.

    Six conv/linear layers in all; sized for 32x32 inputs (maps 32, 16, 16,
    8, 8), it trains in seconds on a CPU.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        plan = [(in_channels, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1)]
        blocks: list[nn.Module] = []
        for cin, cout, stride in plan:
            blocks += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build_model(
    name: str, in_channels: int, num_classes: int, seed: int = 0, *, image_size: int | None = None
) -> tuple[nn.Module, int]:
    """A randomly initialised model (seeded) and the number of input channels it expects.

    torchvision's architectures take 3 channels (a grey dataset is repeated)
    and get a ``num_classes``-way classifier; no pretrained weights are used.

    ``vit_tiny`` is torchvision's ``VisionTransformer`` sized for small
    images (:data:`VIT_TINY`): 4x4 patches, 6 encoder blocks of 4 heads,
    width 128, MLP width 256, no dropout (nor attention dropout: the
    fine-tuning runs compare what a step holds, and dropout masks would add
    to every method's count without being what is compared); about 0.8 M
    parameters. Its position embedding is sized for one image side, so it
    needs ``image_size`` (a multiple of 4); the CNNs ignore it (their
    pooling takes any size).
    """
    torch.manual_seed(seed)
    if name == "smallcnn":
        return SmallCNN(in_channels, num_classes), in_channels
    if name == "vit_tiny":
        if image_size is None:
            raise ValueError("vit_tiny needs image_size: its position embedding is sized for one image side")
        if image_size % VIT_TINY["patch_size"]:
            raise ValueError(f"vit_tiny needs an image size divisible by {VIT_TINY['patch_size']} (its patch size); got {image_size}")
        from torchvision.models import VisionTransformer

        return VisionTransformer(image_size=image_size, num_classes=num_classes, **VIT_TINY), 3
    if name in MODELS:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes), 3
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def candidate_layers(model: nn.Module) -> list[str]:
    """Names of the ``nn.Conv2d``/``nn.Linear`` layers, in registration order (what ``convert(last=k)`` counts).

    Exact types only, as ``convert`` selects them. In ``vit_tiny`` these are
    the patch embedding (``conv_proj``), the two linear layers of each
    block's MLP and the head: 14 layers. The attention projections are not
    among them: the input projection is a parameter of
    ``nn.MultiheadAttention``, not a module, and its output projection (a
    ``NonDynamicallyQuantizableLinear``) is read by the functional attention
    without being called, so neither could be converted. They stay frozen
    for every k, so that the trainable layers are exactly the converted ones.
    """
    return [name for name, m in model.named_modules() if name and type(m) in (nn.Conv2d, nn.Linear)]


class FineTuneSetting:
    """The last ``k`` conv/linear layers trainable, everything before them frozen.

    Trainable: the parameters of the last ``k`` candidate layers and of the
    normalisation layers registered after the first of them (those keep
    updating their statistics, as they would in any fine-tuning of the top of
    a network). Frozen: every other parameter; the normalisation layers before
    the first trainable layer stay in evaluation mode so that the frozen part
    computes exactly what it computed after pretraining.

    Parameters
    ----------
    model : nn.Module
    k : int
        Number of trailing conv/linear layers to train, ``1 <= k <= len(candidate_layers(model))``.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        names = candidate_layers(model)
        if not 1 <= k <= len(names):
            raise ValueError(f"#layers must be between 1 and {len(names)} for this model; got {k}")
        self.trainable_layers = names[-k:]
        order = [name for name, _ in model.named_modules()]
        first = order.index(self.trainable_layers[0])
        self.frozen_norms = [name for name in order[1:first] if isinstance(model.get_submodule(name), _NORMS)]
        trainable_norms = [
            name for name in order[first:] if name and isinstance(model.get_submodule(name), _NORMS)
        ]
        for p in model.parameters():
            p.requires_grad_(False)
        for name in [*self.trainable_layers, *trainable_norms]:
            for p in model.get_submodule(name).parameters():
                p.requires_grad_(True)
        self.model = model
        # Modules, not names: a wrapper (activation checkpointing) may rename them.
        self._frozen_norm_modules = [model.get_submodule(name) for name in self.frozen_norms]

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train(self) -> None:
        """Training mode for the trainable part, evaluation mode for the frozen normalisation layers."""
        self.model.train()
        for module in self._frozen_norm_modules:
            module.eval()


def bn_eval(model: nn.Module) -> None:
    """Every BatchNorm layer of ``model`` in evaluation mode: statistics frozen, as the paper's code fine-tunes (``set_bn_eval``)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class Checkpointed(nn.Module):
    """``module`` run under non-reentrant activation checkpointing (``torch.utils.checkpoint``).

    Its forward keeps only the region's inputs; backward runs the region's
    forward again, so the gradients are exactly vanilla's. The inputs are
    counted by an active :class:`benchmarks._census.StepCensus`, which cannot
    see them as saved tensors.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        from ._census import StepCensus

        if not torch.is_grad_enabled():
            return self.module(*args)
        if StepCensus.active is not None:
            for a in args:
                if isinstance(a, torch.Tensor):
                    StepCensus.active.add(a)
        return checkpoint(self.module, *args, use_reentrant=False)


def checkpoint_trainable(model: nn.Module) -> list[str]:
    """Run the parts of ``model`` that hold trainable parameters under :class:`Checkpointed`; returns their names.

    The root is entered: each child holding a trainable parameter is wrapped
    (the root's forward calls its children, so a child can be wrapped on its
    own). In an ``nn.Sequential`` that is only partly trainable, the run of
    children from the first one holding a trainable parameter to the end
    becomes one region (its first child is replaced by the region, the others
    by ``nn.Identity``). Any other module is wrapped whole: a residual block
    with only its last conv trainable is recomputed whole (its frozen part
    keeps nothing either way, but the region keeps the block's input).
    Parameter-free children of the root stay outside the regions.

    One exception to wrapping whole: a module that is only partly trainable,
    has no trainable parameter of its own and is not an
    ``nn.MultiheadAttention`` (which reads its output projection's weights
    without calling it) is entered as the root is, so that its frozen
    children are not recomputed. In the CNNs every such child of the root is
    an ``nn.Sequential``, so this changes nothing there; in ``vit_tiny`` it
    enters the encoder, whose block sequence then gives one region from the
    first trainable block on and whose final LayerNorm another
    (``["encoder.layers.encoder_layer_5", "encoder.ln", "heads"]`` for the
    last 2 layers): the regions keep the last block's input and the
    LayerNorm's, where the whole encoder as one region would keep only the
    encoder's input but recompute all its frozen blocks in backward.
    """
    wrapped: list[str] = []

    def trainable(module: nn.Module) -> bool:
        return any(p.requires_grad for p in module.parameters())

    def enterable(module: nn.Module) -> bool:
        return (
            not isinstance(module, (nn.Sequential, nn.MultiheadAttention))
            and not all(p.requires_grad for p in module.parameters())
            and not any(p.requires_grad for p in module.parameters(recurse=False))
        )

    def wrap_children(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            if not trainable(child):
                continue
            if isinstance(child, nn.Sequential) and not all(p.requires_grad for p in child.parameters()):
                names = [n for n, _ in child.named_children()]
                first = next(i for i, n in enumerate(names) if trainable(child.get_submodule(n)))
                region = nn.Sequential(*(child.get_submodule(n) for n in names[first:]))
                setattr(child, names[first], Checkpointed(region))
                for n in names[first + 1 :]:
                    setattr(child, n, nn.Identity())
                wrapped.append(
                    f"{prefix}{name}.{names[first]}..{names[-1]}" if len(names) - first > 1 else f"{prefix}{name}.{names[first]}"
                )
            elif enterable(child):
                wrap_children(child, f"{prefix}{name}.")
            else:
                setattr(parent, name, Checkpointed(child))
                wrapped.append(f"{prefix}{name}")

    wrap_children(model, "")
    return wrapped
