"""Row `uc-qwen14b-wup`: the proposal alone.

Stages: proposal.
Every command: launch/reproduce.sh uc-qwen14b-wup --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="uc", family="qwen14b", proposal_stage="wup", method="alone")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default proposal), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
