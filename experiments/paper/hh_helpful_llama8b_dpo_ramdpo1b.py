"""Row `hh-helpful-llama8b-dpo-ramdpo1b`: RAM aligner trained with ram_dpo (beyond the tables).

Stages: proposal_sft, proposal, small, aligner.
Every command: launch/reproduce.sh hh-helpful-llama8b-dpo-ramdpo1b --dry_run
"""

from experiments.paper import rows

ROW = rows.Row(task="hh-helpful", family="llama8b", proposal_stage="dpo", method="ramdpo")


def get_config(arg=None):
    """`arg`: 'stage=NAME' (default aligner), optionally 'runlocal'."""
    return rows.get_config(ROW, arg)
