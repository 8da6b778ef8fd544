"""Row `hh-helpful-qwen14b-dpo-ram3b`: RAM aligner (ram_sft) on the proposal.

Stages: proposal_sft, proposal, small, aligner.
Every command: launch/reproduce.sh hh-helpful-qwen14b-dpo-ram3b --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="hh-helpful", family="qwen14b", proposal_stage="dpo", method="ram")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default aligner), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
