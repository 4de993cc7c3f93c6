"""Pre-release review: waivers, candidate against release, evidence, model card.

- ``waivers``: the review file (``ganaudit-review.toml``) and how its waivers apply to a result.
- ``content``: the content hash of a training image, the key waivers are written against.
- ``evidence``: per leaked training image, what the audit holds against it.
- ``compare``: ``ganaudit compare BASELINE.json CANDIDATE.json``.
- ``model_card``: the audit as a model-card section with Hugging Face ``model-index`` metadata.
- ``hooks``: the few calls the audit, the gate and the outputs make into this package.

Nothing here imports torch, faiss or jinja2 at import time.
"""
