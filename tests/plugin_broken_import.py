"""A plug-in that raises while being imported (tests only): it is named in a warning and
the other optimisers still run."""

raise RuntimeError("plug-in exploded at import")

OPTIMIZERS = {"never-registered": object}  # never reached
