"""Row `hh-harmless-llama8b-dpo-ram1b`: RAM aligner (ram_sft) on the proposal.

Stages: proposal_sft, proposal, small, aligner.
Every command: launch/reproduce.sh hh-harmless-llama8b-dpo-ram1b --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="hh-harmless", family="llama8b", proposal_stage="dpo", method="ram")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default aligner), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
