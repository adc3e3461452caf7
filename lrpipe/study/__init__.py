"""``pipe study``: a published study as one file, planned, run here or submitted to Slurm.

Modules: ``spec`` (the study file and its expansion into steps), ``commands`` (what each pipe command
takes, writes and means), ``state`` (where each step stands), ``plan`` (cost estimates), ``run`` (this
machine), ``slurm`` (a cluster).
"""

from lrpipe.study.spec import Study, expand, list_studies, load_study

__all__ = ["Study", "expand", "list_studies", "load_study"]
