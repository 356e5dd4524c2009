"""MogaNet (Li et al., ICLR 2024) as a timm model.

Six variants are registered in timm's registry when :mod:`moga_analysis` is imported:
``moganet_xtiny``, ``moganet_tiny``, ``moganet_small``, ``moganet_base``, ``moganet_large`` and
``moganet_xlarge`` (short aliases ``moganet_xt`` ... ``moganet_xl``).  Parameter names equal the
official state-dict keys, so official checkpoints load strictly with no remapping.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from .layers import BlockList, ConvPatchEmbed, MogaBlock, StemPatchEmbed

__all__ = ["MogaNet", "ARCH_SETTINGS", "ALIASES", "canonical_name", "checkpoint_filter_fn"]

ARCH_SETTINGS: Dict[str, Dict[str, Tuple[int, ...]]] = {
    "xtiny": dict(embed_dims=(32, 64, 96, 192), depths=(3, 3, 10, 2), ffn_ratios=(8, 8, 4, 4)),
    "tiny": dict(embed_dims=(32, 64, 128, 256), depths=(3, 3, 12, 2), ffn_ratios=(8, 8, 4, 4)),
    "small": dict(embed_dims=(64, 128, 320, 512), depths=(2, 3, 12, 2), ffn_ratios=(8, 8, 4, 4)),
    "base": dict(embed_dims=(64, 160, 320, 512), depths=(4, 6, 22, 3), ffn_ratios=(8, 8, 4, 4)),
    "large": dict(embed_dims=(64, 160, 320, 640), depths=(4, 6, 44, 4), ffn_ratios=(8, 8, 4, 4)),
    "xlarge": dict(embed_dims=(96, 192, 480, 960), depths=(6, 6, 44, 4), ffn_ratios=(8, 8, 4, 4)),
}

#: short name -> registered name
ALIASES = {
    "moganet_xt": "moganet_xtiny",
    "moganet_t": "moganet_tiny",
    "moganet_s": "moganet_small",
    "moganet_b": "moganet_base",
    "moganet_l": "moganet_large",
    "moganet_xl": "moganet_xlarge",
}


class MogaNet(nn.Module):
    """Multi-order gated aggregation network.

    Layout (names as in the official code): for stage ``i`` in 1..4, ``patch_embed{i}`` (a
    two-conv stem for stage 1, a stride-2 conv + BN after), ``blocks{i}`` (a ``ModuleList`` of
    :class:`MogaBlock`), ``norm{i}`` (BN); then global average pooling and ``head``.

    ``gate``, ``multi_order``, ``use_fd`` and ``use_ca`` switch model parts off for training-time
    ablations; the defaults build the published architecture.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (32, 64, 96, 192),
        depths: Sequence[int] = (3, 3, 10, 2),
        ffn_ratios: Sequence[float] = (8, 8, 4, 4),
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_value: float = 1e-5,
        head_init_scale: float = 1.0,
        dilations: Tuple[int, int, int] = (1, 2, 3),
        channel_split: Tuple[int, int, int] = (1, 3, 4),
        gate: bool = True,
        multi_order: bool = True,
        use_fd: bool = True,
        use_ca: bool = True,
    ):
        super().__init__()
        if len(depths) != 4 or len(embed_dims) != 4 or len(ffn_ratios) != 4:
            raise ValueError("MogaNet has four stages: give four embed_dims, depths and ffn_ratios")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (got {global_pool!r})")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_stages = len(depths)
        self.embed_dims = tuple(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.ablation_settings = dict(gate=gate, multi_order=multi_order, use_fd=use_fd, use_ca=use_ca)

        n_blocks = sum(depths)
        rates = [drop_path_rate * j / max(n_blocks - 1, 1) for j in range(n_blocks)]  # linear decay rule
        self.feature_info: List[Dict[str, Any]] = []
        start = 0
        for i, (dim, depth, ratio) in enumerate(zip(embed_dims, depths, ffn_ratios)):
            embed = StemPatchEmbed(in_chans, dim) if i == 0 else ConvPatchEmbed(embed_dims[i - 1], dim)
            blocks = BlockList(
                MogaBlock(
                    dim,
                    ffn_ratio=ratio,
                    drop=drop_rate,
                    drop_path=rates[start + j],
                    init_value=init_value,
                    dilations=dilations,
                    channel_split=channel_split,
                    gate=gate,
                    multi_order=multi_order,
                    use_fd=use_fd,
                    use_ca=use_ca,
                )
                for j in range(depth)
            )
            start += depth
            self.add_module(f"patch_embed{i + 1}", embed)
            self.add_module(f"blocks{i + 1}", blocks)
            self.add_module(f"norm{i + 1}", nn.BatchNorm2d(dim))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"norm{i + 1}"))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        self.apply(self._init_weights)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # as in the official code: fan-out normal for convs, truncated normal for linears
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------- stage access
    def stage(self, index: int) -> Tuple[nn.Module, nn.ModuleList, nn.Module]:
        """``(patch_embed, blocks, norm)`` of stage ``index`` (0-based)."""
        i = index + 1
        return getattr(self, f"patch_embed{i}"), getattr(self, f"blocks{i}"), getattr(self, f"norm{i}")

    def _run_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        embed, blocks, norm = self.stage(index)
        return norm(blocks(embed(x)))

    # ----------------------------------------------------------------- timm contract
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^patch_embed1",
            blocks=r"^blocks(\d+)" if coarse else [(r"^blocks(\d+)\.(\d+)", None), (r"^norm(\d+)", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for i in range(4):
            getattr(self, f"blocks{i + 1}").grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '' (got {global_pool!r})")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map after the last stage's norm: ``[B, C4, H/32, W/32]``."""
        # the four stages written out (not a loop over names) so that TorchScript can compile it;
        # stages removed by prune_intermediate_layers are identities
        x = self.norm1(self.blocks1(self.patch_embed1(x)))
        x = self.norm2(self.blocks2(self.patch_embed2(x)))
        x = self.norm3(self.blocks3(self.patch_embed3(x)))
        x = self.norm4(self.blocks4(self.patch_embed4(x)))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (each after its stage norm, as the official ``fork_feat`` mode).

        ``indices``: the last n stages if an int, all if None, else the listed stage indices.
        Every stage has its own norm, so ``norm`` changes nothing and is accepted for the contract.
        """
        if output_fmt != "NCHW":
            raise ValueError("MogaNet intermediates are NCHW only")
        take, max_index = feature_take_indices(self.num_stages, indices)
        last = max_index if (stop_early or intermediates_only) else self.num_stages - 1
        intermediates = []
        for i in range(last + 1):
            x = self._run_stage(i, x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last wanted one (and the head); returns the kept indices.

        A dropped stage's modules become identities (no parameters, nothing computed)."""
        take, max_index = feature_take_indices(self.num_stages, indices)
        for i in range(max_index + 1, self.num_stages):
            setattr(self, f"patch_embed{i + 1}", nn.Identity())
            setattr(self, f"blocks{i + 1}", BlockList())
            setattr(self, f"norm{i + 1}", nn.Identity())
        self.num_stages = max_index + 1
        self.feature_info = self.feature_info[: max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take


# --------------------------------------------------------------------------- checkpoints
def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Unwrap an official checkpoint (``state_dict`` / ``state_dict_ema`` / ``model``) and strip
    ``module.`` / ``backbone.`` prefixes.  Keys are otherwise already ours."""
    from .checkpoints import unwrap_state_dict

    return unwrap_state_dict(state_dict)


# --------------------------------------------------------------------------- pretrained cfgs
_RELEASE = "https://github.com/Westlake-AI/MogaNet/releases/download/moganet-in1k-weights/"


def _cfg(url: str = "", **kwargs: Any) -> Dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed1.projection.0",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2211.03295",
        **kwargs,
    }


# Fashion-MNIST models trained by this project (weights shipped inside the package; see
# docs/trained_models.md and the model cards next to the weights)
_FMNIST_WEIGHTS = __import__("pathlib").Path(__file__).resolve().parent.parent / "assets" / "weights"
_FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def _fmnist_cfg(filename: Optional[str], variant: str = "", **kwargs: Any) -> Dict[str, Any]:
    """Pretrained cfg of a Fashion-MNIST model: 64 x 64, grayscale replicated to 3 channels.

    ``filename``: the weights shipped in the package; ``None`` for a training-time ablation whose
    weights are not shipped (the cfg then only fixes the preprocessing; pass its checkpoint).
    """
    if filename is not None:
        card = filename.removesuffix(".safetensors") + ".md"
        kwargs.setdefault("description", f"trained by moga_analysis on Fashion-MNIST (MIT) at 64x64; card: {card}")
    else:
        kwargs["description"] = (
            "Fashion-MNIST 64x64 preprocessing of a training-time ablation; weights not shipped: "
            f"python experiments/train_fashion_mnist.py --variant {variant} --epochs 1.25 --batch-size 64 "
            f"--warmup-steps 50 --out runs/fmnist/{variant}_e125, then --checkpoint <out>/model.safetensors"
        )
    return _cfg(
        "",
        file=str(_FMNIST_WEIGHTS / filename) if filename else None,
        num_classes=10,
        input_size=(3, 64, 64),
        pool_size=(2, 2),
        crop_pct=1.0,
        interpolation="bilinear",
        mean=(0.2860, 0.2860, 0.2860),
        std=(0.3530, 0.3530, 0.3530),
        label_names=_FMNIST_CLASSES,
        license="apache-2.0",
        **kwargs,
    )


_CFGS = {
    "moganet_xtiny.in1k": _cfg(_RELEASE + "moganet_xtiny_sz224_8xbs128_ep300.pth.tar"),
    "moganet_xtiny.in1k_256": _cfg(
        _RELEASE + "moganet_xtiny_sz256_8xbs128_ep300.pth.tar", input_size=(3, 256, 256), pool_size=(8, 8)
    ),
    "moganet_xtiny.fmnist_64": _fmnist_cfg("moganet_xtiny_fmnist_64.safetensors"),
    "moganet_xtiny_nogate.fmnist_64": _fmnist_cfg("moganet_xtiny_nogate_fmnist_64.safetensors"),
    "moganet_xtiny_single_order.fmnist_64": _fmnist_cfg(None, "single_order"),
    "moganet_xtiny_nofd.fmnist_64": _fmnist_cfg(None, "no_fd"),
    "moganet_xtiny_noca.fmnist_64": _fmnist_cfg(None, "no_ca"),
    "moganet_tiny.in1k": _cfg(_RELEASE + "moganet_tiny_sz224_8xbs128_ep300.pth.tar"),
    "moganet_tiny.in1k_256": _cfg(
        _RELEASE + "moganet_tiny_sz256_8xbs128_ep300.pth.tar", input_size=(3, 256, 256), pool_size=(8, 8)
    ),
    "moganet_small.in1k": _cfg(_RELEASE + "moganet_small_sz224_8xbs128_ep300.pth.tar"),
    "moganet_base.in1k": _cfg(_RELEASE + "moganet_base_sz224_8xbs128_ep300.pth.tar"),
    "moganet_large.in1k": _cfg(_RELEASE + "moganet_large_sz224_8xbs64_ep300.pth.tar"),
    "moganet_xlarge.in1k": _cfg(_RELEASE + "moganet_xlarge_sz224_8xbs64_ep300.pth.tar"),
}

# An alias is a full name: the registry gives it every tag of its canonical name, with the same cfg
# (URL, file, preprocessing), so timm.is_model_pretrained / list_pretrained / "moganet_s.in1k" work;
# its models are built by, and carry the pretrained cfg of, the canonical name.
default_cfgs = generate_default_cfgs(
    {
        **_CFGS,
        **{
            f"{alias}.{key.split('.', 1)[1]}": cfg
            for alias, target in ALIASES.items()
            for key, cfg in _CFGS.items()
            if key.split(".", 1)[0] == target
        },
    }
)


def canonical_name(name: str) -> str:
    """``moganet_s.in1k`` -> ``moganet_small.in1k``: the registered name an alias stands for (any other
    name unchanged)."""
    arch, sep, tag = name.partition(".")
    return ALIASES.get(arch, arch) + sep + tag


def _check_tag(variant: str, pretrained_cfg: Any) -> None:
    """A tag that the variant does not have is an error (timm would fall back to an empty cfg)."""
    if isinstance(pretrained_cfg, str) and pretrained_cfg:
        from timm.models import get_pretrained_cfg

        try:
            known = get_pretrained_cfg(f"{variant}.{pretrained_cfg}") is not None
        except RuntimeError:  # timm: "Invalid pretrained tag"
            known = False
        if not known:
            tags = sorted(k.split(".", 1)[1] for k in _CFGS if k.split(".", 1)[0] == variant)
            raise ValueError(f"{variant} has no tag {pretrained_cfg!r}; its tags: {', '.join(tags) or 'none'}")


def _feature_wrapper(model: MogaNet, variant: str, feature_cfg: Dict[str, Any]) -> nn.Module:
    """timm's ``features_only`` wrapper around an already built (and loaded) model."""
    wrapped = build_model_with_cfg(
        lambda **_: model,  # timm wraps what this returns; its pretrained weights are already in place
        variant,
        pretrained=False,
        pretrained_cfg=dict(model.pretrained_cfg),
        features_only=True,
        feature_cfg=dict(feature_cfg),
    )
    for attr in ("weights_provenance", "weights_source"):
        if hasattr(model, attr):
            setattr(wrapped, attr, getattr(model, attr))
    return wrapped


def _create_moganet(
    variant: str, pretrained: bool = False, arch: Optional[str] = None, requested: Optional[str] = None, **kwargs: Any
) -> nn.Module:
    """Build ``variant`` (its pretrained cfg names the weights) with the settings of ``arch``
    (default: the variant's own, e.g. ``small`` for ``moganet_small``).

    With ``pretrained=True`` the weights are located first (``file``, then the weights folder, the
    hub cache or a download of ``url``; ``weights_dir=`` / ``cache_dir=`` steer it), so a missing
    file fails before anything is built; they are loaded strictly into the full model, and only then
    is a ``features_only`` model cut down to its feature stages.  ``requested``: the name the user
    typed (an alias), recorded in ``model.weights_provenance``.
    """
    from .checkpoints import load_pretrained, locate_pretrained

    arch = arch or variant.split("_", 1)[1]
    settings = {k: v for k, v in ARCH_SETTINGS[arch].items() if k not in kwargs}
    features_only = kwargs.pop("features_only", False)
    feature_cfg: Dict[str, Any] = dict(out_indices=(0, 1, 2, 3), feature_cls="getter")
    feature_cfg.update(kwargs.pop("feature_cfg", None) or {})
    for key in ("out_indices", "feature_cls"):
        if key in kwargs:
            feature_cfg[key] = kwargs.pop(key)
    weights_dir = kwargs.pop("weights_dir", None)
    cache_dir = kwargs.pop("cache_dir", None)
    tag = kwargs.get("pretrained_cfg")
    _check_tag(variant, tag)
    if requested is None:  # what timm.create_model was given: the name, with its tag if any
        requested = f"{variant}.{tag}" if isinstance(tag, str) and tag else variant
    source = None
    if pretrained:
        from timm.models._builder import resolve_pretrained_cfg

        cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
        source = locate_pretrained(cfg.to_dict(), weights_dir=weights_dir, cache_dir=cache_dir, requested=requested)
    model = build_model_with_cfg(MogaNet, variant, pretrained=False, cache_dir=cache_dir, **settings, **kwargs)
    if pretrained:
        load_pretrained(model, source=source, requested=requested)
    if features_only:
        return _feature_wrapper(model, variant, feature_cfg)
    return model


@register_model
def moganet_xtiny(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    return _create_moganet("moganet_xtiny", pretrained, **kwargs)


@register_model
def moganet_tiny(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    return _create_moganet("moganet_tiny", pretrained, **kwargs)


@register_model
def moganet_small(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    return _create_moganet("moganet_small", pretrained, **kwargs)


@register_model
def moganet_base(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    return _create_moganet("moganet_base", pretrained, **kwargs)


@register_model
def moganet_large(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    return _create_moganet("moganet_large", pretrained, **kwargs)


@register_model
def moganet_xlarge(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    return _create_moganet("moganet_xlarge", pretrained, **kwargs)


def _register_alias(alias: str, target: str) -> None:
    """Register ``alias`` (e.g. ``moganet_s``) as an entry point building ``target``."""

    def entry(pretrained: bool = False, **kwargs: Any) -> MogaNet:
        tag = kwargs.get("pretrained_cfg")
        typed = f"{alias}.{tag}" if isinstance(tag, str) and tag else alias
        kwargs.setdefault("requested", typed)
        return _create_moganet(target, pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = alias
    entry.__doc__ = f"Alias of ``{target}``: the same model, pretrained cfgs, tags and weights file."
    register_model(entry)


for _alias, _target in ALIASES.items():
    _register_alias(_alias, _target)


# --------------------------------------------------------------------------- training-time ablations
#: registered names of architectures built with ablation options (weights: Fashion-MNIST only)
ABLATION_MODELS = {
    "moganet_xtiny_nogate": ("moganet_xtiny", {"gate": False}),
    "moganet_xtiny_single_order": ("moganet_xtiny", {"multi_order": False}),
    "moganet_xtiny_nofd": ("moganet_xtiny", {"use_fd": False}),
    "moganet_xtiny_noca": ("moganet_xtiny", {"use_ca": False}),
}


def _create_ablated(name: str, pretrained: bool = False, **kwargs: Any) -> MogaNet:
    base, options = ABLATION_MODELS[name]
    for k, v in options.items():
        if kwargs.get(k, v) != v:
            raise ValueError(f"{name} is built with {k}={v}; use {base} for other settings")
        kwargs[k] = v
    return _create_moganet(name, pretrained, arch=base.split("_", 1)[1], **kwargs)


@register_model
def moganet_xtiny_nogate(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    """``moganet_xtiny`` without the gate branch (``gate=False``), the training-time no-gate twin of
    the shipped ``moganet_xtiny.fmnist_64``; its only weights are ``moganet_xtiny_nogate.fmnist_64``."""
    return _create_ablated("moganet_xtiny_nogate", pretrained, **kwargs)


@register_model
def moganet_xtiny_single_order(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    """``moganet_xtiny`` with one depth-wise order instead of three (``multi_order=False``); a
    training-time ablation whose Fashion-MNIST weights are not shipped (pass a checkpoint)."""
    return _create_ablated("moganet_xtiny_single_order", pretrained, **kwargs)


@register_model
def moganet_xtiny_nofd(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    """``moganet_xtiny`` without feature decomposition (``use_fd=False``); a training-time ablation
    whose Fashion-MNIST weights are not shipped (pass a checkpoint)."""
    return _create_ablated("moganet_xtiny_nofd", pretrained, **kwargs)


@register_model
def moganet_xtiny_noca(pretrained: bool = False, **kwargs: Any) -> MogaNet:
    """``moganet_xtiny`` without channel aggregation in the MLP (``use_ca=False``); a training-time
    ablation whose Fashion-MNIST weights are not shipped (pass a checkpoint)."""
    return _create_ablated("moganet_xtiny_noca", pretrained, **kwargs)
