"""Row `hh-helpful-llama8b-dpo`: the proposal alone.

Stages: proposal_sft, proposal.
Every command: launch/reproduce.sh hh-helpful-llama8b-dpo --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="hh-helpful", family="llama8b", proposal_stage="dpo", method="alone")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default proposal), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
