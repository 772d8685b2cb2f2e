"""Local explanations, computed and written at a site only (nothing here talks to a server).

- integrated_gradients.py: Captum IntegratedGradients on model inputs, documented baselines,
  Captum's convergence delta reported.
- layer_attribution.py: Captum LayerIntegratedGradients on each model's input projection.
- ablation.py: Captum FeatureAblation over feature groups that really remove the group.
- attention.py: attention maps (pooling weights, per-layer maps, RETAIN alpha/beta, PSG channel
  and temporal weights, multimodal modality contributions).
- plots.py, report.py, cohort.py: PNG figures, the site report (Markdown, HTML, JSON), cohort
  importance.
- *_explainer.py: per-model adapters; options.py: what a site explainer takes; registry.py: task -> site explainer.
"""
