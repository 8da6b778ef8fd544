"""Row `tldr-llama8b-wup-ram1b`: RAM aligner (ram_sft) on the proposal.

Stages: proposal, aligner.
Every command: launch/reproduce.sh tldr-llama8b-wup-ram1b --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="tldr", family="llama8b", proposal_stage="wup", method="ram")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default aligner), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
