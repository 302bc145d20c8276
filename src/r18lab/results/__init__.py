"""Run bookkeeping and reporting: run index (store), metrics log, statistics, tables and plots.

Import the submodule you need (`r18lab.results.store`, `.metrics`, `.stats`, `.tables`, `.plots`);
nothing is re-exported here so a training process that only logs metrics does not pay for
scipy or matplotlib imports.
"""
