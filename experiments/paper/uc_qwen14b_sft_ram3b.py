"""Row `uc-qwen14b-sft-ram3b`: RAM aligner (ram_sft) on the proposal.

Stages: proposal, aligner.
Every command: launch/reproduce.sh uc-qwen14b-sft-ram3b --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="uc", family="qwen14b", proposal_stage="sft", method="ram")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default aligner), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
