"""Row `hh-helpful-llama8b-dpo-aligner1b`: the Aligner corrector baseline.

Stages: proposal_sft, proposal, corrector_warmup, corrector.
Every command: launch/reproduce.sh hh-helpful-llama8b-dpo-aligner1b --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="hh-helpful", family="llama8b", proposal_stage="dpo", method="aligner")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default corrector), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
