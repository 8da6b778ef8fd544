"""Row `tldr-qwen14b-wup-ram3b`: RAM aligner (ram_sft) on the proposal.

Stages: proposal, aligner.
Every command: launch/reproduce.sh tldr-qwen14b-wup-ram3b --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="tldr", family="qwen14b", proposal_stage="wup", method="ram")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default aligner), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
