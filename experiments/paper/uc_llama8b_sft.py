"""Row `uc-llama8b-sft`: the proposal alone.

Stages: proposal.
Every command: launch/reproduce.sh uc-llama8b-sft --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="uc", family="llama8b", proposal_stage="sft", method="alone")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default proposal), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
