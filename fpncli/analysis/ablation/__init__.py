"""The paper's ablation, rerun: every neck trained on the same data with the same budget and
seed, then measured the way Tables 1 and 3 of the FPN paper measure them.

    rows.py     what a row name (``fpn``, ``panet+afp``, ``augfpn+nocs``) trains
    measure.py  proposal recall, detector AP, parameters and time of one trained row
    run.py      :func:`run_ablation`: data, training or reusing each row, the outputs
    report.py   the small-object claim, the table and ``ablation.md``

These modules return data and report progress through a callback; printing is the CLI's.
"""

from fpncli.analysis.ablation.measure import (
    AP_KEYS,
    PROPOSALS,
    PYRAMID_LEVELS,
    TIMED_IMAGES,
    equal_pre_nms,
    measure_recall,
    measure_row,
    rpn_proposals,
    time_inference,
    used_parameters,
)
from fpncli.analysis.ablation.report import (
    COLUMNS,
    claim_sentence,
    format_row,
    header,
    small_object_claim,
    to_markdown,
)
from fpncli.analysis.ablation.rows import (
    AFP_ROWS,
    AUGFPN_ROWS,
    DEFAULT_NECKS,
    DEFAULT_ROWS,
    DETECTORS_ROWS,
    ROW_ALIASES,
    ROW_MODIFIERS,
    SINGLE_SCALE,
    SURVEY_ROWS,
    parse_row,
    row_neck_options,
    row_pooling,
)
from fpncli.analysis.ablation.run import (
    BASE_ITERS,
    BASE_TRAIN_IMAGES,
    BASE_VAL_IMAGES,
    BATCH_SIZE,
    budget_plan,
    run_ablation,
)

__all__ = [
    "AFP_ROWS",
    "AP_KEYS",
    "AUGFPN_ROWS",
    "BASE_ITERS",
    "BASE_TRAIN_IMAGES",
    "BASE_VAL_IMAGES",
    "BATCH_SIZE",
    "COLUMNS",
    "DEFAULT_NECKS",
    "DEFAULT_ROWS",
    "DETECTORS_ROWS",
    "PROPOSALS",
    "PYRAMID_LEVELS",
    "ROW_ALIASES",
    "ROW_MODIFIERS",
    "SINGLE_SCALE",
    "SURVEY_ROWS",
    "TIMED_IMAGES",
    "budget_plan",
    "claim_sentence",
    "equal_pre_nms",
    "format_row",
    "header",
    "measure_recall",
    "measure_row",
    "parse_row",
    "row_neck_options",
    "row_pooling",
    "rpn_proposals",
    "run_ablation",
    "small_object_claim",
    "time_inference",
    "to_markdown",
    "used_parameters",
]
