"""Conformance suites shipped with hpsearch, as Optuna ships its StorageTestCase.

Each module holds one base class; subclass it in a test module (named `Test...`) and provide
the few hooks it names, and pytest runs every promise of the Protocol against your backend:

    from hpsearch.testing.conformance.store import StoreTestCase

Modules are imported directly (nothing is imported here), so a suite loads only what it tests.
"""
