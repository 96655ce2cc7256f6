"""The offline side: datasets and splits, PMI + randomized-SVD pre-training, sampled-loss
fine-tuning, evaluation with the Mult-VAE strong-generalization protocol, baselines,
synthetic data, and the jobs that publish a model version.

Submodules: ``dataset``, ``split``, ``pretrain``, ``finetune``, ``losses``, ``evaluate``,
``baselines``, ``synthetic``, ``jobs``.
"""
