"""trainer.features: dynamic features computed from earlier events (decayed per-id counters,
smoothed rates, behaviour sequences), with their state saved in every model version.

    dyn = DynamicFeatures(spec)       # spec.dynamic declares them (docs/features.md)
    batch = dyn.process(data_file)    # features of each event from strictly earlier events; state moves on
    dyn.lookup(candidates)            # serving: rows scored against the state only
"""

from trainer.features.dynamic import DynamicFeatures, KeyTable
from trainer.features.scan import Groups, decayed_counts, sequences

__all__ = ["DynamicFeatures", "Groups", "KeyTable", "decayed_counts", "sequences"]
