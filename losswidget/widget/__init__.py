"""The Jupyter widget: a traitlets store (store.py) observed by thin views (cards, charts, panel)."""
