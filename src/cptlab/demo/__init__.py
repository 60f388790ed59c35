"""The offline demo: corpora built from text on this machine (`cptlab.demo.corpora`) and the demo study.

Kept light: nothing heavy is imported here, so `from cptlab.demo.corpora import build_demo_corpus` stays fast.
"""
