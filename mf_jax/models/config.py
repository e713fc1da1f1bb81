"""The `model` (the generator) and `mae` (the feature encoder) config sections, declared once
(mf_jax/config_fields.py): default, rule and the fix an error names."""
from mf_jax.config_fields import (NON_NEGATIVE, POSITIVE, Field, boolean, choice, int_tuple,
                                  number, optional, text)
from mf_jax.errors import ConfigError
from mf_jax.models.attention import MATMUL_PRECISIONS
from mf_jax.models.dit import ATTENTION_IMPLS

COMPUTE_DTYPES = ("float32", "bfloat16", "float64")  # The keys of train_state.DTYPES.

MODEL = dict(
    name=Field("dit", choice("dit", "dit_modern", "dit_incontext", "dit_pixel", "mlp", "unet"),
               "dit for images, dit_modern for the Drifting release's generator, dit_incontext "
               "for iMF, dit_pixel for pixel MeanFlow, mlp for small vectors, unet for CIFAR-10 "
               "(unconditional)", shape=True),
    variant=Field("B/2", text(), "NAME/PATCH, e.g. 'B/2'", shape=True),
    # None: the variant's.
    depth=Field(None, optional(POSITIVE), "None (the variant's) or a block count", shape=True,
                field_type=int),
    hidden_size=Field(None, optional(POSITIVE), "None (the variant's) or a width divisible by "
                                                "num_heads and 4", shape=True, field_type=int),
    num_heads=Field(None, optional(POSITIVE), "None (the variant's) or a divisor of hidden_size",
                    shape=True, field_type=int),
    # "bfloat16": bf16 matmuls with fp32 parameters.
    compute_dtype=Field("float32", choice(*COMPUTE_DTYPES),
                        "float32, or bfloat16 for bf16 matmuls"),
    # "einsum" | "xla" | "cudnn" (GPU, bf16; XLA inside jvps): mf_jax/models/attention.py.
    attention_impl=Field("einsum", choice(*ATTENTION_IMPLS), "einsum works everywhere; cudnn needs "
                                                             "a GPU and compute_dtype='bfloat16'"),
    # DiT matmul operands: "default" (the platform's: bf16 on TPU, TF32 on GPUs), "bfloat16"
    # (float32 storage, bf16 operands: the GPU analogue of a float32 run on TPU), "float32".
    matmul_precision=Field("default", choice(*MATMUL_PRECISIONS),
                           "default, or bfloat16 for bf16 matmul operands with float32 storage"),
    # Rematerialise DiT blocks in the backward pass: less memory, ~1/3 more compute.
    remat=Field(False, boolean(), "True trades compute for memory"),
    mlp_widths=Field((512, 512, 512, 512), int_tuple(), "hidden widths, e.g. (512, 512, 512, 512)",
                     shape=True),  # name="mlp" only.
    # name="dit_modern" only (the Drifting release's generator, mf_jax/models/dit_modern.py).
    # In-context class tokens before the image tokens.
    cls_tokens=Field(16, NON_NEGATIVE, "16 (the Drifting release)", shape=True),
    # Noise labels: noise_coords labels, each in [0, noise_classes); 0 = none.
    noise_classes=Field(64, NON_NEGATIVE, "64 (the Drifting release), or 0 for no noise labels",
                        shape=True),
    noise_coords=Field(32, POSITIVE, "32 (the Drifting release)", shape=True),
    # Attention (rotary angles, logits, softmax, value product) in float32; False: in
    # compute_dtype, as the release's latent SOTA configs (attn_fp32: false).
    attn_fp32=Field(True, boolean(), "True (float32 attention), False for attention in "
                                     "model.compute_dtype (the release's latent SOTA configs)"),
    # name="dit_incontext" (iMF) and "dit_pixel" (pMF) only: blocks per head (u and v) after the
    # shared trunk.
    head_depth=Field(8, NON_NEGATIVE, "8 (iMF), at most the depth", shape=True),
    unet=dict(  # name="unet" only (DDPM++ U-Net, mf_jax/models/unet.py).
        channels=Field(128, POSITIVE, "128 (official CIFAR-10 U-Net)"),
        channel_mult=Field((2, 2, 2), int_tuple(), "(2, 2, 2)"),
        num_blocks=Field(4, POSITIVE, "4"),
        attn_resolutions=Field((16,), int_tuple(allow_empty=True), "(16,)"),
        # Training only; the trainer passes the dropout rng.
        dropout=Field(0.2, number(0.0, 1.0, hi_open=True), "0.2 (official)"),
    ),
)

# The feature encoder (method="mae" pretrains it; drifting reads the same fields to rebuild it).
MAE = dict(
    # "resnet": this codebase's small encoder (mf_jax/models/feature_encoder.py); "release": the
    # Drifting release's MAE ResNet (mf_jax/models/mae_resnet.py: layers, input_patch_size and
    # every_k_block apply; blocks_per_stage, groups and decoder_width do not).
    arch=Field("resnet", choice("resnet", "release"),
               "resnet (this codebase's), or release (MAE-256/640)", shape=True),
    # Blocks per stage, arch="release".
    layers=Field((3, 4, 6, 3), int_tuple(), "(3, 4, 6, 3) (release)", shape=True),
    # arch="release": p x p pixels folded into channels first (pixels: 8).
    input_patch_size=Field(1, POSITIVE, "1 for latents, 8 for 256x256 pixels (release)",
                           shape=True),
    # arch="release": features also from every k-th block of a stage; 0 = none.
    every_k_block=Field(2, NON_NEGATIVE, "2 (release); 0 = stage outputs only"),
    widths=Field((128, 256, 512, 512), int_tuple(), "e.g. (128, 256, 512, 512)", shape=True),
    blocks_per_stage=Field(2, POSITIVE, "e.g. 2", shape=True),
    groups=Field(32, POSITIVE, "a divisor of every mae.widths entry, e.g. 32", shape=True),
    decoder_width=Field(256, POSITIVE, "e.g. 256", shape=True),
    mask_ratio=Field(0.75, number(0.0, 1.0, hi_open=True), "0.75"),
    patch_size=Field(2, POSITIVE, "a divisor of data.image_size, e.g. 2"),
    # "bfloat16": bf16 convolutions; norms and feature statistics in fp32.
    compute_dtype=Field("float32", choice("float32", "bfloat16"),
                        "float32, or bfloat16 for bf16 convolutions", shape=True),
    # Rematerialise encoder blocks in the backward pass (drifting's generated samples).
    remat=Field(False, boolean(), "True trades compute for memory"),
)


def check_mae(config) -> None:
  """The encoder's shape constraints for method='mae' (pretraining it)."""
  e, size = config.mae, config.data.image_size
  if e.arch == "release":
    check_release_mae(config)
    return
  if size % e.patch_size:
    raise ConfigError(f"mae.patch_size={e.patch_size} must divide data.image_size={size}.")
  for width in e.widths:
    if width % e.groups:
      raise ConfigError(f"mae.groups={e.groups} must divide every mae.widths entry "
                        f"{tuple(e.widths)}.")


def check_release_mae(config) -> None:
  """mae.arch='release': four stages; its patches tile the image."""
  e, size = config.mae, config.data.image_size
  if len(e.widths) != 4 or len(e.layers) != 4:
    raise ConfigError(f"mae.widths={tuple(e.widths)} and mae.layers={tuple(e.layers)} need 4 "
                      "entries each for mae.arch='release', e.g. (256, 512, 1024, 2048) and "
                      "(3, 4, 6, 3).")
  cell = e.patch_size * e.input_patch_size
  if size % cell:
    raise ConfigError(f"mae.patch_size={e.patch_size} x mae.input_patch_size={e.input_patch_size}"
                      f" = {cell} must divide data.image_size={size}.")
