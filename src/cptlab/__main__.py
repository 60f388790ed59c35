"""`python -m cptlab ...` (and `torchrun --nproc_per_node N -m cptlab train CONFIG.yaml`): the same as `cptlab ...`."""

from cptlab.cli import main

main()
