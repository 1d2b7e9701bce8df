"""``tgfr study``: the paper's tables and figures from one command, over several seeds.

For each seed the face encoder is trained once (step 0) and shared, as a pretrained
``model.image_weights`` checkpoint, by every run of that seed. Each run then trains its
caption and fusion steps from the study's training config (the ``paper`` preset and the
study preset's changes) plus its own changes, and is scored on the test split. Produces:

* Table 2: image only, BERT-FLF, CGFR-style and TGFR (paper) on one caption encoder, plus TGFR
  with this project's variants; TAR@FAR 1e-5/1e-4/1e-3 and rank-1 at normal and very bad probes;
* the Table 4 analogue: FLF and TGFR on the BiLSTM against the transformer;
* Table 3: the FCAM loss ablation with the identity loss in every row (ID, +CICL, +WRCL, +IMCL, all);
* Table 5: EER and TAR@FAR 1e-5/1e-4/1e-3 per probe quality level (image only, CGFR-style, TGFR);
* the paper's claims judged by paired 95 % intervals over the seeds (holds, reversed, undecided);
* ``faces.png`` (Fig. 6: one face at each quality level), ``roc.png`` (Fig. 5);
* ``study.md`` and ``study.json``.

The package: :mod:`~tgfr.study.runs` (what runs), :mod:`~tgfr.study.presets` (what sizes of
study exist), :mod:`~tgfr.study.runner` (how they run, and when a finished run is reused) and
:mod:`~tgfr.study.report` (what is reported, and how a claim is judged).
"""
from .presets import PRESETS, StudyConfig, default_text_model, load_study_config
from .report import paired_interval, study_claims, study_markdown, verdict, write_study
from .runner import plan, run_study
from .runs import Run, study_runs

__all__ = [
    "PRESETS", "Run", "StudyConfig", "default_text_model", "load_study_config", "paired_interval", "plan",
    "run_study", "study_claims", "study_markdown", "study_runs", "verdict", "write_study",
]
