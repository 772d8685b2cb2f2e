"""Training losses, one module per family; build them by config name with registry.build_loss.

classification (focal, weighted BCE, per-sample CE, class weights), temporal (recency-weighted
BCE), survival (Cox partial likelihood, Breslow/Efron ties), contrastive (InfoNCE).
"""
