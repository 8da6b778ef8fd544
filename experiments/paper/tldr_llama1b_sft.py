"""Row `tldr-llama1b-sft`: the small model alone (SFT).

Stages: small.
Every command: launch/reproduce.sh tldr-llama1b-sft --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="tldr", family="llama8b", proposal_stage="wup", method="small")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default small), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
