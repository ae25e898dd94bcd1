"""Analysis services: what each pyramid level sees (inspect-levels), a dataset's fit to the anchors, the model description (fpn info), the neck ablation."""
