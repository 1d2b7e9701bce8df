"""``tgfr study``: the paper's tables and figures from one command, over several seeds.

For each seed the face encoder is trained once (step 0) and shared, as a pretrained
``model.image_weights`` checkpoint, by every run of that seed. Each run then trains its
caption and fusion steps from the study's training config (the ``paper`` preset and the
study preset's changes) plus its own changes, and is scored on the test split. Produces:

* Table 2: the baselines (image only, BiLSTM-FLF, BERT-FLF, CGFR-style) and TGFR, plus TGFR
  with this project's variants beside the faithful one; TAR@FAR 1e-5/1e-4/1e-3 and rank-1;
* Table 3: the FCAM loss ablation (WRCL only, +ID, +CICL, +IMCL, all);
* Table 5: EER and TAR@FAR=1e-3 per probe quality level, trained on normal photos as the
  paper does, plus a row trained on mixed and very bad views too;
* ``faces.png`` (Fig. 6: one face at each quality level), ``roc.png`` (Fig. 5);
* ``study.md`` (mean ± standard deviation over the seeds) and ``study.json``.

The package: :mod:`~tgfr.study.runs` (what runs), :mod:`~tgfr.study.presets` (what sizes of
study exist), :mod:`~tgfr.study.runner` (how they run, and when a finished run is reused) and
:mod:`~tgfr.study.report` (what is reported).
"""
from .presets import PRESETS, StudyConfig, default_text_model, load_study_config
from .report import study_markdown, write_study
from .runner import plan, run_study
from .runs import BERT_SYSTEMS, Run, study_runs

__all__ = [
    "BERT_SYSTEMS", "PRESETS", "Run", "StudyConfig", "default_text_model", "load_study_config", "plan", "run_study",
    "study_markdown", "study_runs", "write_study",
]
