"""Row `tldr-llama8b-wup-aligner1b`: the Aligner corrector baseline.

Stages: proposal, corrector_warmup, corrector.
Every command: launch/reproduce.sh tldr-llama8b-wup-aligner1b --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="tldr", family="llama8b", proposal_stage="wup", method="aligner")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default corrector), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
