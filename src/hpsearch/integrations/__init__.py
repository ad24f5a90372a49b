"""Adapters that run training code written for other frameworks as an ordinary `hpsearch.Task`.

    lightning   LightningTask: a LightningModule and its LightningDataModule, unchanged

Each sits beside the user's task code: it imports only `hpsearch.task`, `hpsearch.errors` and
its framework, so hpsearch's exact loop, checkpoints and search run it like any other task.
"""
