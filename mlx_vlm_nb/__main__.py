"`python -m mlx_vlm_nb ...` runs the `mlx_vlm_nb` command line (see nbs/09_cli.ipynb)."
import sys
from mlx_vlm_nb.cli import main

sys.exit(main())
