"""Many runs: trained together in one process (`together`), studies over seeds (`study`), sweeps over grids
(`sweep`), reuse of finished runs (`reuse`) and the statistics of their tables (`stats`)."""

# How a group trained together computes its forward (see together.pick_forward); here so that the command line's
# parser can list them without importing torch.
FORWARDS = ("auto", "loop", "vmap")
