"""The one rule for ``--gpu`` sizes, as text: imported by every command's ``--help`` (planner/cli.py) without
the catalog behind it (``import planner.gpus`` costs ~13 ms of start-up). The parser is planner/gpus.py."""

SIZE_RULE = ("A bare size is a card as sold, a whole number of GB (a vendor's GB is GiB: 24GB = 24GiB), budgeted "
             "at what CUDA reports for such a card (e.g. 24GB -> 23.64 GiB); exact:SIZE is exactly that capacity "
             "as CUDA reports it (exact:23.55GiB, exact:24000000000B; GB = 10^9 B, GiB = 2^30 B).")
"""The one rule for ``--gpu`` sizes, stated in the help of every command that takes --gpu."""
GPU_HELP = f"A name from `vramplan gpus` (rtx4090, a100-80gb) or a size. {SIZE_RULE}"
