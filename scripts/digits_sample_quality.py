"""Sample quality on the digits for several sampling-time guidance settings of one trained model.

For each guidance scale (MeanFlow: CFG scale; iMF: omega, a condition of the network), draws
--num_samples samples with the labels cycling through the classes and reports the pixel Frechet
distance to the 297 held-out digits (as the evaluator's fd_pixels) and the class accuracy of the
samples: the fraction a classifier trained on the real training digits (scikit-learn's logistic
regression on the uint8 pixels) assigns to the label they were drawn for. The classifier's own
held-out accuracy is printed as the ceiling.

  python -m scripts.digits_sample_quality --config=configs/imf_digits.py --workdir=/tmp/imf_digits \
      --cfg_scales=1,1.5,2,3,5 --out=/tmp/imf_digits/sweep.json
"""
import json

import numpy as np
from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The config the workdir was trained with.")
flags.DEFINE_string("workdir", None, "The trained workdir.")
flags.DEFINE_list("cfg_scales", ["1.0"], "Guidance scales (iMF: omega) to score.")
flags.DEFINE_integer("num_steps", 1, "Sampling steps (NFE without guidance).")
flags.DEFINE_integer("num_samples", 1000, "Samples per scale.")
flags.DEFINE_string("out", "", "Also write the rows as JSON here.")
flags.mark_flags_as_required(["config", "workdir"])


def classifier():
  """Logistic regression on the real training digits, as uint8 pixels scaled to [0, 1]."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from input_pipeline import digits  # pylint: disable=import-outside-toplevel
  from mf_jax import generate  # pylint: disable=import-outside-toplevel
  pixels = lambda x: np.asarray(generate.quantize_uint8(x)).reshape(len(x), -1) / 255.0
  train, held_out = digits.load("train"), digits.load("eval")
  model = LogisticRegression(max_iter=5000).fit(pixels(train["x"]), train["label"])
  ceiling = float(np.mean(model.predict(pixels(held_out["x"])) == held_out["label"]))
  return model, ceiling


def main(argv):
  del argv
  from eval import evaluators, fid, stats  # pylint: disable=import-outside-toplevel
  from mf_jax import generate, train  # pylint: disable=import-outside-toplevel
  from mf_jax import ema as ema_lib  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  state, mesh, model = train.restore_trained(config, FLAGS.workdir, "sample")
  params = (state.ema_params[ema_lib.ema_index(config, "eval")] if config.eval.use_ema
            else state.params)
  sample_fn = generate.make_sampler(config, model, mesh)
  mu, sigma = evaluators.pixel_reference_stats(config)
  clf, ceiling = classifier()
  rows = []
  for scale in (float(s) for s in FLAGS.cfg_scales):
    x, labels = generate.draw(config, sample_fn, params, mesh, FLAGS.num_samples,
                              FLAGS.num_steps, config.eval.seed, scale)
    images = generate.to_uint8(x, config)
    fd = stats.frechet_distance(*stats.stats_from_features(fid.pixel_features(images)), mu, sigma)
    accuracy = float(np.mean(clf.predict(images.reshape(len(images), -1) / 255.0) == labels))
    rows.append({"cfg_scale": scale, "num_steps": FLAGS.num_steps, "fd_pixels": float(fd),
                 "class_accuracy": accuracy})
    print(f"scale {scale:g}, {FLAGS.num_steps}-NFE: pixel FD {fd:.4f}, class accuracy "
          f"{accuracy:.3f}", flush=True)
  print(f"classifier's accuracy on the held-out real digits: {ceiling:.3f}")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"step": int(state.step), "classifier_held_out_accuracy": ceiling,
                 "rows": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
