"""``fpn eval --analyze``: why a detector misses.

TIDE's error breakdown (:mod:`.tide`), COCO's error-analysis curves (:mod:`.error_curves`), a
confusion matrix with background (:mod:`.confusion`), the worst images (:mod:`.worst_images`)
and, when a model runs, the pyramid level behind each detection and error (:mod:`.levels`);
:mod:`.report` runs them and writes ``analysis.json`` and the pictures.
"""
