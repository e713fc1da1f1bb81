"""The one config schema every run shares; other configs start here and override fields.

Sections: data, model, meanflow (the objective), optim, train, sharding, sample, eval.
Defaults follow the paper's ImageNet recipe (REFERENCE.md section 1) where one exists.
"""
import ml_collections

from mf_jax import augment, drifting


def meanflow_config(num_classes=1000) -> ml_collections.ConfigDict:
  """The objective's section: time sampler, r != t fraction, guidance in the target, weighting."""
  return ml_collections.ConfigDict(dict(
      num_classes=num_classes,  # Null label = num_classes; 0 = unconditional.
      time_sampler="logit_normal",  # or "uniform"
      time_mu=-0.4,
      time_sigma=1.0,
      time_mu_r=None,  # r's own logit-normal (mu, sigma); None: the same as t's.
      time_sigma_r=None,
      time_pairing="sort",  # "sort": t, r = max, min (paper, v0) | "min_r": r = min(t, r) (v1).
      r_neq_t_ratio=0.25,  # Fraction of the batch with r != t; 0 is flow matching.
      adaptive_p=1.0,  # Weight 1 / sg((d + c)^p); p = 0 is plain L2.
      adaptive_c=1e-3,
      guidance_omega=1.0,  # omega = 1, kappa = 0: no guidance in the target.
      guidance_kappa=0.0,
      guidance_t_min=0.0,  # Guidance only for t in [t_min, t_max].
      guidance_t_max=1.0,
      class_dropout=0.1,
      # Which rows get the null label: "independent" (each with probability class_dropout) or
      # "r_eq_t_first" (the official code's layout: Binomial count, r = t rows first).
      class_dropout_rows="independent",
      # Table 1 ablations (the defaults are the paper's method; see mf_jax/meanflow.py):
      jvp_tangent="v,0,1",  # Table 1b: tangents of (z, r, t) for du/dt; "v,0,0" | "v,1,0" | "v,1,1".
      time_conditioning="t,t-r",  # Table 1c: scalars the network sees; "r,t" | "t,r" | "t-r" (one).
  ))


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.method = "meanflow"  # "meanflow" | "drifting"

  config.data = ml_collections.ConfigDict(dict(
      name="imagenet_latents",  # "digits" | "imagenet_latents" | "imagenet_pixels" | "cifar10"
      path="",  # Folder of prepared records, or a TFDS data_dir.
      image_size=32,
      channels=4,
      num_classes=1000,
      latent_scale=0.18215,  # SD-VAE scale; latents only.
      vae_path="",  # Local diffusers AutoencoderKL weights, to decode latent samples.
      random_flip=True,
      # imagenet_pixels: RandomResizedCrop of the stored crop with area in [this, 1]; 0 = none.
      random_crop_min_area=0.0,
      num_train_examples=0,  # Training-set size; needed only by optim.warmup_epochs.
  ))
  num_classes = config.data.get_ref("num_classes")

  config.model = ml_collections.ConfigDict(dict(
      name="dit",
      variant="B/2",
      depth=ml_collections.FieldReference(None, field_type=int),
      hidden_size=ml_collections.FieldReference(None, field_type=int),
      num_heads=ml_collections.FieldReference(None, field_type=int),
      compute_dtype="float32",  # "bfloat16": bf16 matmuls with fp32 parameters.
      attention_impl="einsum",  # "einsum" | "xla" | "cudnn" (GPU, bf16; XLA inside jvps): models/attention.py
      # DiT matmul operands: "default" (the platform's: bf16 on TPU, TF32 on GPUs), "bfloat16"
      # (float32 storage, bf16 operands: the GPU analogue of a float32 run on TPU), "float32".
      matmul_precision="default",
      remat=False,  # Rematerialise DiT blocks in the backward pass: less memory, ~1/3 more compute.
      mlp_widths=(512, 512, 512, 512),  # name="mlp" only.
      # name="dit_modern" only (the Drifting release's generator, mf_jax/models/dit_modern.py).
      cls_tokens=16,  # In-context class tokens before the image tokens.
      noise_classes=64,  # Noise labels: noise_coords labels, each in [0, noise_classes); 0 = none.
      noise_coords=32,
      # Attention (rotary angles, logits, softmax, value product) in float32; False: in
      # compute_dtype, as the release's latent SOTA configs (attn_fp32: false).
      attn_fp32=True,
      unet=ml_collections.ConfigDict(dict(  # name="unet" only (DDPM++ U-Net, mf_jax/models/unet.py).
          channels=128,
          channel_mult=(2, 2, 2),
          num_blocks=4,
          attn_resolutions=(16,),
          dropout=0.2,  # Training only; the trainer passes the dropout rng.
      )),
  ))

  config.meanflow = meanflow_config()
  config.meanflow.num_classes = num_classes
  # EDM augmentation in the train step, labels fed to the network (mf_jax/augment.py; U-Net only).
  config.augment = augment.default_config()

  # Drifting Models (method="drifting"): the loss's section plus how the trainer feeds it.
  config.drifting = drifting.default_config()
  config.drifting.update(dict(
      classes_per_step=64,  # N_c classes per step, each with num_pos real and num_neg generated.
      num_pos=64,
      queue_len=128,  # Real samples kept per class on device.
      # How the queues store samples: "float32", or "uint8" for 8-bit pixel data (imagenet_pixels,
      # cifar10): 4x less memory; every 8-bit level is kept, and a draw is within 2^-24 of the
      # float32 bank's (mf_jax/class_queues.py).
      bank_dtype="float32",
      # Guidance negatives (num_unc per class) are drawn from the most recent uncond_queue_len real
      # samples of any class; 0 draws them from the other classes of the step instead.
      uncond_queue_len=1000,
      # Before the first step the queues are filled from the stream until every class holds num_pos
      # samples; a bounded wait (> one ImageNet epoch, so class-ordered shards reach every class).
      fill_max_examples=2_000_000,
      # Workdir of a method="mae" run whose encoder gives the feature space; "" = raw samples.
      feature_encoder_workdir="",
      # ConvNeXt-V2 features added to the encoder's (the release's pixel configs, use_convnext):
      # pixel data only. convnext_path: the .npz written by `python -m mf_jax.convert.drifting
      # --convnext_src=... --convnext_out=...`; depths/dims: its size (default ConvNeXt-V2-Base,
      # facebook/convnextv2-base-22k-224, as the release).
      use_convnext=False,
      convnext_path="",
      convnext_depths=(3, 3, 27, 3),
      convnext_dims=(128, 256, 512, 1024),
      convnext_compute_dtype="float32",  # The release's default (its convnext_bf16: false).
  ))
  # The feature encoder (method="mae" pretrains it; drifting reads the same fields to rebuild it).
  config.mae = ml_collections.ConfigDict(dict(
      # "resnet": this codebase's small encoder (mf_jax/models/feature_encoder.py); "release": the
      # Drifting release's MAE ResNet (mf_jax/models/mae_resnet.py: layers, input_patch_size and
      # every_k_block apply; blocks_per_stage, groups and decoder_width do not).
      arch="resnet",
      layers=(3, 4, 6, 3),  # Blocks per stage, arch="release".
      input_patch_size=1,  # arch="release": p x p pixels folded into channels first (pixels: 8).
      every_k_block=2,  # arch="release": features also from every k-th block of a stage; 0 = none.
      widths=(128, 256, 512, 512),
      blocks_per_stage=2,
      groups=32,
      decoder_width=256,
      mask_ratio=0.75,
      patch_size=2,
      compute_dtype="float32",  # "bfloat16": bf16 convolutions; norms and feature statistics in fp32.
      remat=False,  # Rematerialise encoder blocks in the backward pass (drifting's generated samples).
  ))

  config.optim = ml_collections.ConfigDict(dict(
      name="adamw",  # "adamw" | "adam" (no weight decay term at all).
      learning_rate=1e-4,
      b1=0.9,
      b2=0.95,
      weight_decay=0.0,
      warmup_steps=0,
      warmup_epochs=0.0,  # > 0: warmup over this many epochs of data.num_train_examples instead.
      schedule="constant",  # "constant" | "cosine"
      grad_clip=0.0,  # Global-norm clip; 0 disables.
  ))
  config.ema_decays = (0.9999,)
  config.ema_every = 1  # EMA updated every k steps with decay^k (k > 1 saves time on big batches).

  config.train = ml_collections.ConfigDict(dict(
      global_batch_size=256,
      num_steps=1_200_000,  # ~240 epochs of ImageNet at batch 256.
      log_every=100,
      checkpoint_every=5000,
      keep_checkpoints=3,
      sample_every=10_000,  # Sample grids to TensorBoard and WORKDIR/samples/; 0 disables.
      profile=False,  # CLU profiler action around a few early steps.
  ))
  config.sharding = ml_collections.ConfigDict(dict(
      fsdp=1,  # Devices per FSDP group; parameters and optimizer state are sharded over them.
  ))
  config.sample = ml_collections.ConfigDict(dict(
      num_samples=64,
      num_steps=1,
      # "meanflow": z <- z - (t - r) u(z, r, t); "euler": flow-matching Euler steps with the
      # instantaneous velocity u(z, t, t) (the r = t baseline). Sample grids and evaluation use it.
      sampler="meanflow",
      batch_size=64,
      use_ema=True,
      ema_index=0,
      seed=1,
  ))
  config.eval = ml_collections.ConfigDict(dict(
      every_steps=0,  # Sample-quality evaluation every N steps and at the end; 0 disables.
      num_samples=50_000,  # FID-50K.
      batch_size=256,  # Samples per chunk, split over all devices (a multiple of the device count).
      num_steps=(1, 2),  # One score per entry: 1-NFE and 2-NFE sampling.
      cfg_scale=1.0,  # Sampling-time guidance; 1.0 = none (MeanFlow trains it into the target).
      label_sampling="cycle",  # "cycle": N / num_classes per class; "uniform": random (official).
      uint8_rounding="half_even",  # "half_even": round(127.5 (x + 1)); "half_up": floor(127.5 x + 128).
      # Non-empty: score every listed scale instead of cfg_scale (fd_..._cfg<s>) and report the
      # best as fd_<k>nfe, its scale as best_cfg_<k>nfe (the Drifting release's CFG sweep).
      cfg_scales=(),
      use_ema=True,
      ema_index=0,  # Which of ema_decays to evaluate.
      features="inception",  # "inception" (FID, IS) | "pixels" (Frechet distance of raw pixels).
      inception_path="",  # FID Inception .pth/.npz; "" = eval.fid's default path; "random": tests.
      ref_stats="",  # .npz with mu/sigma; required for inception, optional for pixels (held-out).
      seed=2,
  ))
  return config
