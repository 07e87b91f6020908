"""Helpers shared by the test modules: synthetic data, the local references the parameter server and the
recovery tests are checked against, and small serving/search builders.

Test-only: product packages and the benches never import ``tests`` (dependencies point from tests to the
product, never back). What a bench also needs stays in ``bench`` (e.g. ``bench.servedata``'s StoreTrainer and
Taobao-like CSV writer, used by ``bench serve`` and ``bench gate``) and the tests import it from there.
"""
