"""One rule table per foreign checkpoint format; each module converts with mf_jax.convert.engine."""
